// The chat demo (see index.html).

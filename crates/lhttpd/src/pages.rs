//! The pages `lhttpd` serves on its main port, embedded at build time: the chat demo (web/)
//! and the JavaScript SDK (sdk/js/), which pages on other origins may import.

/// (path, content type, content) of each file.
pub const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../../web/index.html"),
    ),
    (
        "/chat.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/chat.js"),
    ),
    (
        "/chat.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/chat.css"),
    ),
    (
        "/sdk/lhttp.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../sdk/js/lhttp.js"),
    ),
    (
        "/sdk/lhttp.d.ts",
        "text/plain; charset=utf-8",
        include_str!("../../../sdk/js/lhttp.d.ts"),
    ),
];

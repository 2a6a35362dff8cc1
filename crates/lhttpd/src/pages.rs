//! The pages `lhttpd` serves on its main port, embedded at build time: the chat demo (web/),
//! the JavaScript SDK (sdk/js/), which pages on other origins may import, and the admin page
//! (web/admin.*) where `[admin]` enables it.

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

/// (name under `admin.path`, content type, content) of each file of the admin page.
pub const ADMIN: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("../../../web/admin.html"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/admin.js"),
    ),
    (
        "admin.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/admin.css"),
    ),
];

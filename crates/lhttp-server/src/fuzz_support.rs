//! Entry points for the fuzz targets in `fuzz/`. Not a public API.

pub use crate::transport::websocket::frame::contract::websocket_frames;

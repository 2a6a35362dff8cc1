//! The server's side of RFC 6455 on an upgraded connection: [`frame`] decodes client frames
//! and encodes server frames, [`socket`] reads and writes them with buffers that an idle
//! connection does not hold.
//!
//! Written for this server rather than taken from a crate: tungstenite costs about 1,500
//! instructions per message on the way in and out (small reads, a copy per message, a
//! per-message sink round trip), and the faster crates (tokio-websockets, fastwebsockets)
//! allocate an 8 KiB read buffer per connection when it opens, more than the whole budget of
//! an idle connection. The handshake is still checked with tungstenite's accept-key function.
//! docs/architecture.md ("WebSocket layer") has the measurements.

pub(crate) mod frame;
pub(crate) mod socket;

pub(crate) use socket::WebSocket;

//! WebSocket client frames: arbitrary bytes read the way a connection reads its socket, in
//! chunks whose size is the first byte, never panic the decoder, and decode to the same items
//! (or the same violation) as the bytes read all at once. The checks are in
//! `lhttp_server::fuzz_support::websocket_frames`, next to the private decoder they drive.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lhttp_server::fuzz_support::websocket_frames(data);
});

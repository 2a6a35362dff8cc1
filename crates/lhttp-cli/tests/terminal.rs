//! The interactive session on a real pseudo-terminal: line editing, messages printed while the
//! prompt waits, history saved.

mod common;

use std::{
    io::{Read, Write},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{WAIT, start};
use lhttp_client::Message;

/// Everything the terminal showed so far, shared with the thread that reads it.
type Screen = Arc<Mutex<Vec<u8>>>;

fn shown(screen: &Screen) -> String {
    String::from_utf8_lossy(&screen.lock().expect("screen lock")).into_owned()
}

async fn wait_for_text(screen: &Screen, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !shown(screen).contains(text) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{text:?} never appeared; the terminal shows {:?}",
            shown(screen)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn interactive_session_on_a_terminal() {
    let server = start().await;
    let home = std::env::temp_dir().join(format!("lhttp-terminal-test-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("temp home");

    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lhttp"))
        .args(["--url", &server.url()])
        .env("HOME", &home)
        .env("TERM", "xterm")
        .stdin(Stdio::from(pty.slave.try_clone().expect("dup")))
        .stdout(Stdio::from(pty.slave.try_clone().expect("dup")))
        .stderr(Stdio::from(pty.slave))
        .kill_on_drop(true)
        .spawn()
        .expect("lhttp starts");

    let mut keyboard = std::fs::File::from(pty.master.try_clone().expect("dup"));
    let screen: Screen = Arc::default();
    {
        let screen = screen.clone();
        let mut display = std::fs::File::from(pty.master);
        let mut answer = keyboard.try_clone().expect("dup");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = display.read(&mut buf) {
                if n == 0 {
                    break;
                }
                // A terminal answers a cursor position request; this one always says 1;1.
                if buf[..n].windows(4).any(|w| w == b"\x1b[6n") {
                    let _ = answer.write_all(b"\x1b[1;1R");
                }
                screen
                    .lock()
                    .expect("screen lock")
                    .extend_from_slice(&buf[..n]);
            }
        });
    }

    wait_for_text(&screen, "lhttp> ").await;
    keyboard.write_all(b"subscribe room\r").expect("type");
    server.wait_subscribers("room", 1).await;

    // Published by someone else while the prompt waits: shown at once.
    let message = Message::builder("chat")
        .header("publish", "room")
        .body("hi while idle")
        .build()
        .unwrap();
    server.handle.publish(&message).expect("publish");
    wait_for_text(&screen, "hi while idle").await;

    keyboard.write_all(b"nonsense\r").expect("type");
    wait_for_text(&screen, "unknown command \"nonsense\"").await;

    keyboard.write_all(b"quit\r").expect("type");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("lhttp exits after quit")
        .expect("exit status");
    // On a terminal a failed command is shown, not turned into an exit code.
    assert_eq!(status.code(), Some(0));
    let history = std::fs::read_to_string(home.join(".lhttp_history")).expect("history saved");
    assert!(history.contains("subscribe room\n"), "{history:?}");
    let _ = std::fs::remove_dir_all(&home);
}

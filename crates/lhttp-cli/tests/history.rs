//! `lhttp sub` and `lhttp bench relay` on channels that keep history, against a real
//! in-process server: `--recent`, what `sub` prints after a cut connection (what was missed,
//! or one line about a gap), and the relay scenario's exactly-once count. Connections are cut
//! through TCP relays on loopback.

mod common;

#[allow(dead_code)]
#[path = "../../lhttp-client/tests/common/relay.rs"]
mod relay;

use common::{WAIT, lhttp, start_with};
use lhttp_client::Message;
use lhttp_server::{Config, ServerHandle, config::ChannelOptions};
use relay::Relay;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStderr, ChildStdout},
};

/// Channels `feed.*` keep 1000 messages, `short.*` 5, in memory.
fn history_config() -> Config {
    let mut config = Config::default();
    for (pattern, size) in [("feed.*", 1000), ("short.*", 5)] {
        config.channels.push(ChannelOptions {
            pattern: pattern.to_owned(),
            history_size: size,
            ..ChannelOptions::default()
        });
    }
    config.history.store = "memory".to_owned();
    config
}

fn publish(server: &ServerHandle, channel: &str, body: &str) {
    let message = Message::builder("chat")
        .header("publish", channel.to_owned())
        .body(body.to_owned())
        .build()
        .unwrap();
    server.publish(&message).expect("publish");
}

/// `lhttp --format json sub ...`, its stdout and stderr read line by line.
struct Sub {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Sub {
    fn spawn(url: &str, args: &[&str]) -> Sub {
        let mut all = vec!["--url", url, "--format", "json", "sub"];
        all.extend_from_slice(args);
        let mut child = lhttp(&all).spawn().expect("lhttp starts");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        Sub {
            child,
            stdout,
            stderr,
        }
    }

    /// The channel and body of the next message printed.
    async fn message(&mut self) -> (String, String) {
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("timed out waiting for a message")
            .expect("read stdout")
            .expect("lhttp ended early");
        let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        let channel = json["headers"]
            .as_array()
            .and_then(|headers| headers.iter().find(|h| h[0] == "publish"))
            .and_then(|h| h[1].as_str())
            .expect("a publish header")
            .to_owned();
        (
            channel,
            json["body"].as_str().expect("a text body").to_owned(),
        )
    }

    /// Reads stderr until each of `texts` was in a line (in any order); returns every line
    /// read.
    async fn stderr_until(&mut self, texts: &[&str]) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        while !texts
            .iter()
            .all(|text| lines.iter().any(|line| line.contains(text)))
        {
            let line = tokio::time::timeout(WAIT, self.stderr.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {texts:?} on stderr; got {lines:?}"))
                .expect("read stderr")
                .expect("lhttp ended early");
            lines.push(line);
        }
        lines
    }

    /// Stops lhttp and returns what is left on its stderr.
    async fn finish(mut self) -> Vec<String> {
        self.child.kill().await.expect("kill");
        let mut rest = Vec::new();
        while let Ok(Ok(Some(line))) = tokio::time::timeout(WAIT, self.stderr.next_line()).await {
            rest.push(line);
        }
        rest
    }
}

fn pair(channel: &str, body: &str) -> (String, String) {
    (channel.to_owned(), body.to_owned())
}

#[tokio::test]
async fn sub_recent_prints_the_last_messages_kept_then_live_ones() {
    let server = start_with(history_config()).await;
    for i in 1..=5 {
        publish(&server.handle, "feed.news", &format!("n{i}"));
    }
    publish(&server.handle, "feed.sport", "s1");
    let mut sub = Sub::spawn(
        &server.url(),
        &["--recent", "2", "feed.news", "feed.sport", "plain"],
    );
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(sub.message().await);
    }
    first.sort();
    assert_eq!(
        first,
        [
            pair("feed.news", "n4"),
            pair("feed.news", "n5"),
            pair("feed.sport", "s1")
        ]
    );
    server.wait_subscribers("plain", 1).await;
    publish(&server.handle, "feed.news", "n6");
    assert_eq!(sub.message().await, pair("feed.news", "n6"));
    publish(&server.handle, "plain", "p1");
    assert_eq!(sub.message().await, pair("plain", "p1"));
    assert_eq!(
        sub.finish().await,
        Vec::<String>::new(),
        "nothing on stderr"
    );
}

#[tokio::test]
async fn sub_prints_what_was_missed_after_a_cut_and_says_once_when_some_is_lost() {
    let server = start_with(history_config()).await;
    let relay = Relay::start(server.addr).await;
    let mut sub = Sub::spawn(&relay.ws_url(), &["feed.kept", "short.trimmed"]);
    server.wait_subscribers("short.trimmed", 1).await;
    publish(&server.handle, "feed.kept", "k1");
    publish(&server.handle, "short.trimmed", "t1");
    assert_eq!(sub.message().await, pair("feed.kept", "k1"));
    assert_eq!(sub.message().await, pair("short.trimmed", "t1"));

    // Away while feed.kept gets two messages and short.trimmed ten (it keeps five).
    relay.refuse(true);
    relay.cut();
    sub.stderr_until(&["connection lost"]).await;
    for i in 2..=3 {
        publish(&server.handle, "feed.kept", &format!("k{i}"));
    }
    for i in 2..=11 {
        publish(&server.handle, "short.trimmed", &format!("t{i}"));
    }
    relay.refuse(false);
    let said = sub.stderr_until(&["reconnected", "lost ("]).await;
    let lost: Vec<&String> = said.iter().filter(|l| l.contains("lost (")).collect();
    assert_eq!(
        lost,
        [
            "lhttp: short.trimmed: messages published while disconnected were lost (the server no longer keeps them)"
        ],
        "{said:?}"
    );

    publish(&server.handle, "feed.kept", "k4");
    publish(&server.handle, "short.trimmed", "t12");
    let mut after = Vec::new();
    for _ in 0..4 {
        after.push(sub.message().await);
    }
    assert_eq!(
        after,
        [
            pair("feed.kept", "k2"),
            pair("feed.kept", "k3"),
            pair("feed.kept", "k4"),
            pair("short.trimmed", "t12"),
        ]
    );
    let rest = sub.finish().await;
    assert!(
        rest.iter().all(|l| !l.contains("lost (")),
        "the gap is told once: {rest:?}"
    );
}

/// `lhttp bench relay` against a real server keeping the channel's history: the connections it
/// cuts during the stream cost nothing (every message exactly once); a channel without
/// history is refused with the block to add.
#[tokio::test]
async fn bench_relay_delivers_every_message_exactly_once_across_cuts() {
    let mut config = history_config();
    config.limits.messages_per_second = 0;
    config.channels[0].history_size = 3000;
    let server = start_with(config).await;
    let run = common::run(
        lhttp(&[
            "--url",
            &server.url(),
            "bench",
            "relay",
            "-n",
            "2000",
            "--rate",
            "4000",
            "--drop-every-ms",
            "100",
            "--channel",
            "feed.relay",
            "--json",
        ]),
        b"",
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!(report["published"], 2000, "{report}");
    assert_eq!(report["exactly_once"], 2000, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert!(report["cuts"].as_u64().unwrap() >= 2, "{report}");
    assert!(report["recovery_us"]["max"].as_u64().is_some(), "{report}");

    let run = common::run(
        lhttp(&[
            "--url",
            &server.url(),
            "bench",
            "relay",
            "--channel",
            "plain",
        ]),
        b"",
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("keeps no history"), "{}", run.stderr);
}

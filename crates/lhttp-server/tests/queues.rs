//! Queue groups: each message to exactly one member, credit, acknowledgements, at-least-once
//! hand-over, drain.

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use common::{Client, Event, TestServer, WAIT, config, start, start_with};
use lhttp_server::{Server, proto::Message};

/// Joins group `group` of `channel` with `credit`, confirmed by the server; returns the work
/// handed over before the confirmation (a member gets waiting work as it joins).
async fn join(client: &mut Client, channel: &str, group: &str, credit: usize) -> Vec<Message> {
    let (answer, early) = client
        .request(&format!(
            "LHTTP/1.0 sub\r\nsubscribe:{channel}\r\nqueue:{group}\r\ncredit:{credit}\r\n\r\n"
        ))
        .await;
    assert_eq!(answer.command(), "ok", "{answer:?}");
    early
}

fn delivery_id(message: &Message) -> u64 {
    message
        .header("delivery-id")
        .expect("a queue delivery has a delivery-id")
        .parse()
        .unwrap()
}

async fn ack(client: &mut Client, id: u64) {
    client
        .send(&format!("LHTTP/1.0 ack\r\nack:{id}\r\n\r\n"))
        .await;
}

/// The next message, or `None` after `ms` of silence.
async fn next_within(client: &mut Client, ms: u64) -> Option<Message> {
    match tokio::time::timeout(Duration::from_millis(ms), client.event()).await {
        Err(_) => None,
        Ok(Event::Message(m)) => Some(m),
        Ok(other) => panic!("expected a message, got {other:?}"),
    }
}

async fn publish_numbered(publisher: &mut Client, channel: &str, n: usize, extra: &str) {
    for i in 0..n {
        publisher
            .send(&format!(
                "LHTTP/1.0 job\r\npublish:{channel}\r\n{extra}\r\n{i}"
            ))
            .await;
    }
}

#[tokio::test]
async fn three_workers_share_3000_messages_each_delivered_to_exactly_one() {
    let server = start().await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        let mut worker = server.client().await;
        join(&mut worker, "jobs", "workers", 20).await;
        workers.push(worker);
    }
    // An ordinary subscriber still gets every message.
    let mut watcher = server.client().await;
    let (ok, _) = watcher
        .request("LHTTP/1.0 sub\r\nsubscribe:jobs\r\n\r\n")
        .await;
    assert_eq!(ok.command(), "ok");

    let mut publisher = server.client().await;
    let total = 3000;
    let publishing = tokio::spawn(async move {
        publish_numbered(&mut publisher, "jobs", total, "").await;
        publisher
    });

    // Each worker takes, checks and acknowledges until the work stops coming.
    let mut handles = Vec::new();
    for (w, mut worker) in workers.into_iter().enumerate() {
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = next_within(&mut worker, 1500).await {
                assert_eq!(m.header("queue"), Some("workers"));
                assert_eq!(m.header("publish"), Some("jobs"));
                got.push(
                    std::str::from_utf8(m.body())
                        .unwrap()
                        .parse::<usize>()
                        .unwrap(),
                );
                ack(&mut worker, delivery_id(&m)).await;
            }
            (w, got)
        }));
    }
    let mut owner = HashMap::new();
    let mut counts = Vec::new();
    for handle in handles {
        let (w, got) = handle.await.unwrap();
        counts.push(got.len());
        for n in got {
            assert!(owner.insert(n, w).is_none(), "message {n} delivered twice");
        }
    }
    let _publisher = publishing.await.unwrap();
    assert_eq!(owner.len(), total, "every message handled: {counts:?}");
    assert!(counts.iter().all(|&c| c > 0), "work is shared: {counts:?}");
    let mut seen = 0;
    while let Some(m) = next_within(&mut watcher, 1000).await {
        assert_eq!(
            m.header("delivery-id"),
            None,
            "ordinary copies carry no delivery id"
        );
        seen += 1;
    }
    assert_eq!(seen, total);
    assert_eq!(server.metric("queue_acks_total"), total as u64);
}

#[tokio::test]
async fn a_member_never_holds_more_than_its_credit() {
    let server = start().await;
    let mut one = server.client().await;
    join(&mut one, "tasks", "g", 1).await;
    let mut two = server.client().await;
    join(&mut two, "tasks", "g", 2).await;
    let mut publisher = server.client().await;
    publish_numbered(&mut publisher, "tasks", 6, "").await;

    let first = one.recv().await;
    assert!(
        next_within(&mut one, 300).await.is_none(),
        "credit 1 holds one"
    );
    let a = two.recv().await;
    let b = two.recv().await;
    assert!(
        next_within(&mut two, 300).await.is_none(),
        "credit 2 holds two"
    );

    // Each acknowledgement frees exactly one message's worth of credit.
    ack(&mut one, delivery_id(&first)).await;
    let second = one.recv().await;
    assert!(next_within(&mut one, 300).await.is_none());
    ack(&mut two, delivery_id(&a)).await;
    let c = two.recv().await;
    assert!(next_within(&mut two, 300).await.is_none());
    let bodies: HashSet<_> = [&first, &second, &a, &b, &c]
        .iter()
        .map(|m| m.body().clone())
        .collect();
    assert_eq!(bodies.len(), 5, "five different messages");

    // Acknowledging what one does not hold is an error, and frees nothing.
    let (bad, _) = one.request("LHTTP/1.0 ack\r\nack:999999\r\n\r\n").await;
    assert_eq!(bad.header("status"), Some("400"));
    ack(&mut two, delivery_id(&b)).await;
    assert!(
        next_within(&mut two, 500).await.is_some(),
        "the sixth message"
    );
}

#[tokio::test]
async fn a_killed_worker_hands_its_at_least_once_messages_to_the_survivors() {
    let server = start().await;
    let mut doomed = server.client().await;
    join(&mut doomed, "work", "w", 5).await;
    let mut publisher = server.client().await;
    let total = 300;
    // The doomed worker takes its first five and never acknowledges them.
    publish_numbered(&mut publisher, "work", total, "delivery:at-least-once\r\n").await;
    let mut held = HashSet::new();
    for _ in 0..5 {
        held.insert(doomed.recv().await.body().clone());
    }
    let mut survivors = Vec::new();
    for _ in 0..2 {
        let mut worker = server.client().await;
        let early = join(&mut worker, "work", "w", 3).await;
        survivors.push((worker, early));
    }
    let mut handles = Vec::new();
    for (mut worker, early) in survivors {
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for m in early {
                got.push(m.body().clone());
                ack(&mut worker, delivery_id(&m)).await;
            }
            while let Some(m) = next_within(&mut worker, 1500).await {
                got.push(m.body().clone());
                ack(&mut worker, delivery_id(&m)).await;
            }
            got
        }));
    }
    // Killed mid-stream: the TCP connection just ends.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(doomed);

    let mut handled = HashMap::new();
    for handle in handles {
        for body in handle.await.unwrap() {
            *handled.entry(body).or_insert(0) += 1;
        }
    }
    assert_eq!(handled.len(), total, "every message handled");
    assert!(handled.values().all(|&n| n == 1), "each exactly once");
    assert!(
        held.iter().all(|b| handled.contains_key(b)),
        "the held ones too"
    );
    assert_eq!(server.metric("queue_redeliveries_total"), 5);
}

#[tokio::test]
async fn a_request_lost_with_its_worker_gets_502_unless_at_least_once() {
    let server = start().await;
    let mut worker = server.client().await;
    join(&mut worker, "svc", "g", 1).await;
    let mut requester = server.client().await;
    requester
        .send("LHTTP/1.0 do\r\npublish:svc\r\nreply-to:\r\nrequest-id:q1\r\n\r\nonce")
        .await;
    worker.recv().await;
    drop(worker);
    let (status, _, message) = requester.recv_error().await;
    assert_eq!(status, 502);
    assert_eq!(message.header("request-id"), Some("q1"));

    // At-least-once: the next member gets it and its answer reaches the requester.
    let mut first = server.client().await;
    join(&mut first, "svc", "g", 1).await;
    requester
        .send("LHTTP/1.0 do\r\npublish:svc\r\nreply-to:\r\nrequest-id:q2\r\ndelivery:at-least-once\r\n\r\nagain")
        .await;
    first.recv().await;
    let mut second = server.client().await;
    join(&mut second, "svc", "g", 1).await;
    drop(first);
    let request = second.recv().await;
    assert_eq!(request.body().as_ref(), b"again");
    let reply_to = request.header("reply-to").unwrap();
    second
        .send(&format!(
            "LHTTP/1.0 done\r\npublish:{reply_to}\r\nack:{}\r\n\r\nhandled",
            delivery_id(&request)
        ))
        .await;
    let answer = requester.recv().await;
    assert_eq!(answer.header("request-id"), Some("q2"));
    assert_eq!(answer.body().as_ref(), b"handled");
}

#[tokio::test]
async fn drain_finishes_the_work_in_hand_then_leaves() {
    let server = start().await;
    let mut leaving = server.client().await;
    join(&mut leaving, "jobs", "g", 2).await;
    let mut publisher = server.client().await;
    publish_numbered(&mut publisher, "jobs", 2, "").await;
    let a = leaving.recv().await;
    let b = leaving.recv().await;

    leaving
        .send("LHTTP/1.0 drain\r\ndrain:jobs\r\nqueue:g\r\nrequest-id:d1\r\n\r\n")
        .await;
    // New work waits for someone else.
    let mut staying = server.client().await;
    join(&mut staying, "jobs", "g", 10).await;
    publish_numbered(&mut publisher, "jobs", 3, "").await;
    for _ in 0..3 {
        staying.recv().await;
    }
    ack(&mut leaving, delivery_id(&a)).await;
    assert!(
        next_within(&mut leaving, 300).await.is_none(),
        "not done yet"
    );
    ack(&mut leaving, delivery_id(&b)).await;
    let drained = leaving.recv().await;
    assert_eq!(drained.command(), "drained");
    assert_eq!(drained.header("request-id"), Some("d1"));
    assert_eq!(drained.header("queue"), Some("g"));
    publish_numbered(&mut publisher, "jobs", 1, "").await;
    assert!(
        next_within(&mut leaving, 300).await.is_none(),
        "left the group"
    );
    staying.recv().await;
}

#[tokio::test]
async fn work_waits_for_a_member_and_the_queue_is_bounded() {
    let server = start_with(Server::builder(config(|c| c.queues.max_queued = 3))).await;
    let mut busy = server.client().await;
    join(&mut busy, "jobs", "g", 1).await;
    let mut requester = server.client().await;
    for i in 0..5 {
        requester
            .send(&format!(
                "LHTTP/1.0 do\r\npublish:jobs\r\nreply-to:\r\nrequest-id:r{i}\r\n\r\n{i}"
            ))
            .await;
    }
    // One held, three waiting, the fifth refused at once.
    let (status, reason, message) = requester.recv_error().await;
    assert_eq!(
        (status, message.header("request-id")),
        (503, Some("r4")),
        "{reason}"
    );
    let mut order = Vec::new();
    let mut current = busy.recv().await;
    for _ in 0..4 {
        order.push(String::from_utf8(current.body().to_vec()).unwrap());
        let reply_to = current.header("reply-to").unwrap().to_owned();
        busy.send(&format!(
            "LHTTP/1.0 done\r\npublish:{reply_to}\r\nack:{}\r\n\r\n",
            delivery_id(&current)
        ))
        .await;
        requester.recv().await;
        if order.len() < 4 {
            current = busy.recv().await;
        }
    }
    assert_eq!(
        order,
        ["0", "1", "2", "3"],
        "waiting work goes out oldest first"
    );
}

#[tokio::test]
async fn a_request_waiting_for_a_member_that_never_comes_gets_503() {
    let server = start().await;
    let mut worker = server.client().await;
    join(&mut worker, "svc", "g", 1).await;
    let mut requester = server.client().await;
    requester
        .send("LHTTP/1.0 do\r\npublish:svc\r\nreply-to:\r\nrequest-id:a\r\ntimeout:5000\r\n\r\n")
        .await;
    let held = worker.recv().await;
    // The second waits behind the first; then the only member leaves (answering the first).
    requester
        .send("LHTTP/1.0 do\r\npublish:svc\r\nreply-to:\r\nrequest-id:b\r\ntimeout:400\r\n\r\n")
        .await;
    let reply_to = held.header("reply-to").unwrap();
    worker
        .send(&format!("LHTTP/1.0 done\r\npublish:{reply_to}\r\n\r\n"))
        .await;
    assert_eq!(requester.recv().await.header("request-id"), Some("a"));
    worker
        .send("LHTTP/1.0 bye\r\nunsubscribe:svc\r\nqueue:g\r\n\r\n")
        .await;
    let (status, _, message) = requester.recv_error().await;
    assert_eq!((status, message.header("request-id")), (503, Some("b")));
}

#[tokio::test]
async fn memberless_groups_go_away() {
    let server: TestServer = start().await;
    let mut worker = server.client().await;
    join(&mut worker, "a", "g", 1).await;
    join(&mut worker, "b", "g", 1).await;
    assert_eq!(server.metric("queue_groups"), 2);
    drop(worker);
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.metric("queue_groups") != 0 {
        assert!(tokio::time::Instant::now() < deadline, "groups left behind");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn bad_queue_headers_are_refused() {
    let server = start().await;
    let mut client = server.client().await;
    for (text, status) in [
        (
            "LHTTP/1.0 s\r\nsubscribe:a\r\nqueue:g\r\ncredit:0\r\n\r\n",
            "400",
        ),
        (
            "LHTTP/1.0 s\r\nsubscribe:a\r\nqueue:g\r\ncredit:lots\r\n\r\n",
            "400",
        ),
        ("LHTTP/1.0 s\r\nsubscribe:a\r\ncredit:3\r\n\r\n", "400"),
        (
            "LHTTP/1.0 s\r\nsubscribe:a\r\nqueue:bad name!\r\n\r\n",
            "400",
        ),
        ("LHTTP/1.0 s\r\ndrain:a\r\nqueue:g\r\n\r\n", "400"),
        ("LHTTP/1.0 s\r\nack:x\r\n\r\n", "400"),
        (
            "LHTTP/1.0 s\r\nsubscribe:_inbox.abc\r\nqueue:g\r\n\r\n",
            "403",
        ),
    ] {
        let (answer, _) = client.request(text).await;
        assert_eq!(
            answer.header("status"),
            Some(status),
            "{text:?} -> {answer:?}"
        );
    }
    assert_eq!(server.metric("queue_groups"), 0, "nothing half-joined");
}

#[tokio::test]
async fn a_publisher_cannot_forge_a_queue_delivery() {
    let server = start().await;
    let mut watcher = server.client().await;
    let (ok, _) = watcher
        .request("LHTTP/1.0 sub\r\nsubscribe:room\r\n\r\n")
        .await;
    assert_eq!(ok.command(), "ok");
    let mut forger = server.client().await;
    forger
        .send("LHTTP/1.0 chat\r\npublish:room\r\nqueue:g\r\ndelivery-id:99\r\nack:5\r\ncredit:3\r\n\r\nforged")
        .await;
    let copy = watcher.recv().await;
    assert_eq!(copy.body().as_ref(), b"forged");
    for name in ["queue", "delivery-id", "ack", "credit"] {
        assert_eq!(copy.header(name), None, "{name} relayed: {copy:?}");
    }
}

#[tokio::test]
async fn channel_rules_apply_to_queue_groups_and_never_block_replies() {
    let server = start_with(Server::builder(config(|c| {
        c.auth.rules.push(lhttp_server::ChannelRule {
            channels: "jobs".into(),
            subscribe: true,
            publish: true,
            anonymous: true,
            ..Default::default()
        });
    })))
    .await;
    let mut worker = server.client().await;
    let (refused, _) = worker
        .request("LHTTP/1.0 sub\r\nsubscribe:secret\r\nqueue:g\r\n\r\n")
        .await;
    assert_eq!(refused.header("status"), Some("403"), "{refused:?}");
    join(&mut worker, "jobs", "g", 1).await;
    let mut requester = server.client().await;
    requester
        .send("LHTTP/1.0 do\r\npublish:jobs\r\nreply-to:\r\nrequest-id:r1\r\n\r\nx")
        .await;
    let request = worker.recv().await;
    let reply_to = request.header("reply-to").unwrap();
    // No rule names the reply address, yet the worker may answer there.
    worker
        .send(&format!(
            "LHTTP/1.0 done\r\npublish:{reply_to}\r\nack:{}\r\n\r\nok",
            delivery_id(&request)
        ))
        .await;
    let answer = requester.recv().await;
    assert_eq!(answer.header("request-id"), Some("r1"));
    assert_eq!(answer.body().as_ref(), b"ok");
}

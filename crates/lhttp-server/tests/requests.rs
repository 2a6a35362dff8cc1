//! Request/reply: `reply-to`, inboxes, and exactly one terminal answer per request.

mod common;

use std::time::Duration;

use common::{Client, TestServer, config, start, start_with};
use lhttp_server::{Server, proto::Message};

/// Subscribes `client` to `channel` and waits until the server confirmed it.
async fn subscribe(client: &mut Client, channel: &str) {
    let (answer, _) = client
        .request(&format!("LHTTP/1.0 sub\r\nsubscribe:{channel}\r\n\r\n"))
        .await;
    assert_eq!(answer.command(), "ok", "{answer:?}");
}

/// Sends a request to `channel` with request-id `id`.
async fn ask(client: &mut Client, channel: &str, id: &str, extra: &str, body: &str) {
    client
        .send(&format!(
            "LHTTP/1.0 ask\r\npublish:{channel}\r\nreply-to:\r\nrequest-id:{id}\r\n{extra}\r\n{body}"
        ))
        .await;
}

/// Answers `request` (as a responder received it) with `headers` and `body`.
async fn answer(responder: &mut Client, request: &Message, headers: &str, body: &str) {
    let reply_to = request.header("reply-to").expect("a request has reply-to");
    responder
        .send(&format!(
            "LHTTP/1.0 answer\r\npublish:{reply_to}\r\n{headers}\r\n{body}"
        ))
        .await;
}

#[tokio::test]
async fn request_reply_round_trip_gets_exactly_one_answer() {
    let server = start().await;
    let mut responder = server.client().await;
    subscribe(&mut responder, "svc").await;
    let mut requester = server.client().await;
    ask(&mut requester, "svc", "r1", "", "ping").await;

    let request = responder.recv().await;
    assert_eq!(request.body().as_ref(), b"ping");
    assert_eq!(request.header("request-id"), Some("r1"));
    let reply_to = request.header("reply-to").unwrap().to_owned();
    assert!(reply_to.starts_with("_inbox."), "{reply_to}");

    // The responder does not copy the request-id: the server does.
    answer(&mut responder, &request, "status:200\r\n", "pong").await;
    let reply = requester.recv().await;
    assert_eq!(reply.command(), "answer");
    assert_eq!(reply.header("request-id"), Some("r1"));
    assert_eq!(reply.header("status"), Some("200"));
    assert_eq!(reply.body().as_ref(), b"pong");
    assert_eq!(reply.header("publish"), None, "an answer is not a delivery");

    // A second answer to the same request is dropped: one terminal answer only, and no `ok`.
    answer(&mut responder, &request, "", "late").await;
    requester.expect_silence(300).await;
    assert_eq!(server.metric("request_late_replies_total"), 1);
    // One request ended: counted once in the duration histogram, well under its 1 s bucket.
    let metrics = server.handle.render_metrics();
    for line in [
        "lhttp_request_duration_seconds_count 1\n",
        "lhttp_request_duration_seconds_bucket{le=\"1\"} 1\n",
        "lhttp_request_duration_seconds_bucket{le=\"+Inf\"} 1\n",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn request_with_nobody_subscribed_gets_503_at_once() {
    let server = start().await;
    let mut requester = server.client().await;
    ask(&mut requester, "nobody-here", "r1", "", "x").await;
    let (status, reason, message) = requester.recv_error().await;
    assert_eq!(status, 503);
    assert!(reason.contains("no responders"), "{reason}");
    assert_eq!(message.header("request-id"), Some("r1"));
    requester.expect_silence(200).await;
}

#[tokio::test]
async fn request_times_out_with_504_and_a_late_reply_is_dropped() {
    let server = start().await;
    let mut responder = server.client().await;
    subscribe(&mut responder, "slow").await;
    let mut requester = server.client().await;
    ask(&mut requester, "slow", "r9", "timeout:200\r\n", "x").await;
    let request = responder.recv().await;

    let (status, _, message) = requester.recv_error().await;
    assert_eq!(status, 504);
    assert_eq!(message.header("request-id"), Some("r9"));

    answer(&mut responder, &request, "", "too late").await;
    requester.expect_silence(300).await;
}

#[tokio::test]
async fn streamed_replies_extend_the_deadline_and_end_with_the_final_one() {
    let server = start().await;
    let mut responder = server.client().await;
    subscribe(&mut responder, "stream").await;
    let mut requester = server.client().await;
    ask(&mut requester, "stream", "s1", "timeout:400\r\n", "go").await;
    let request = responder.recv().await;

    // Four partial answers 250 ms apart: 1 s in all, longer than the 400 ms timeout, but each
    // one pushes the deadline back.
    for i in 0..4 {
        answer(
            &mut responder,
            &request,
            "partial:true\r\n",
            &format!("chunk{i}"),
        )
        .await;
        let part = requester.recv().await;
        assert_eq!(part.header("partial"), Some("true"));
        assert_eq!(part.header("request-id"), Some("s1"));
        assert_eq!(part.body().as_ref(), format!("chunk{i}").as_bytes());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    answer(&mut responder, &request, "", "done").await;
    let last = requester.recv().await;
    assert_eq!(last.header("partial"), None);
    assert_eq!(last.body().as_ref(), b"done");
    // Ended: no 504 later.
    requester.expect_silence(600).await;
}

#[tokio::test]
async fn a_request_needs_a_request_id_and_a_valid_timeout() {
    let server = start().await;
    let mut client = server.client().await;
    client
        .send("LHTTP/1.0 ask\r\npublish:svc\r\nreply-to:\r\n\r\nx")
        .await;
    let (status, reason, _) = client.recv_error().await;
    assert_eq!(status, 400);
    assert!(reason.contains("request-id"), "{reason}");

    ask(&mut client, "svc", "t1", "timeout:soon\r\n", "x").await;
    let (status, _, message) = client.recv_error().await;
    assert_eq!(status, 400);
    assert_eq!(message.header("request-id"), Some("t1"));
}

#[tokio::test]
async fn the_server_chooses_the_reply_address() {
    // A requester cannot direct answers to someone else's inbox.
    let server = start().await;
    let mut victim = server.client().await;
    let (inbox_answer, _) = victim.request("LHTTP/1.0 inbox\r\n\r\n").await;
    let victim_inbox = inbox_answer.header("inbox").unwrap().to_owned();

    let mut responder = server.client().await;
    subscribe(&mut responder, "svc").await;
    let mut requester = server.client().await;
    // The requester names the victim's inbox as reply-to; the server replaces it.
    requester
        .send(&format!(
            "LHTTP/1.0 ask\r\npublish:svc\r\nreply-to:{victim_inbox}\r\nrequest-id:r1\r\n\r\nx"
        ))
        .await;
    let request = responder.recv().await;
    let reply_to = request.header("reply-to").unwrap();
    assert!(reply_to.starts_with("_inbox."), "{reply_to}");
    assert!(!reply_to.starts_with(&victim_inbox), "{reply_to}");
    answer(&mut responder, &request, "", "for the requester").await;
    assert_eq!(requester.recv().await.body().as_ref(), b"for the requester");
    victim.expect_silence(200).await;
}

#[tokio::test]
async fn an_inbox_delivers_to_its_owner_only_and_cannot_be_subscribed() {
    let server = start().await;
    let mut owner = server.client().await;
    let (answer, _) = owner.request("LHTTP/1.0 inbox\r\n\r\n").await;
    assert_eq!(answer.command(), "inbox");
    let inbox = answer.header("inbox").unwrap().to_owned();
    assert!(inbox.starts_with("_inbox.") && inbox.len() > 20, "{inbox}");
    // The same inbox for the life of the connection.
    let (again, _) = owner.request("LHTTP/1.0 inbox\r\n\r\n").await;
    assert_eq!(again.header("inbox"), Some(inbox.as_str()));

    let mut spy = server.client().await;
    let (refused, _) = spy
        .request(&format!("LHTTP/1.0 sub\r\nsubscribe:{inbox}\r\n\r\n"))
        .await;
    assert_eq!(refused.command(), "error");
    assert_eq!(refused.header("status"), Some("403"));

    let mut sender = server.client().await;
    sender
        .send(&format!("LHTTP/1.0 note\r\npublish:{inbox}\r\n\r\nfor you"))
        .await;
    let note = owner.recv().await;
    assert_eq!(note.command(), "note");
    assert_eq!(note.body().as_ref(), b"for you");
    spy.expect_silence(200).await;

    // A guessed inbox reaches nobody and harms nothing.
    sender
        .send("LHTTP/1.0 note\r\npublish:_inbox.00000000.0000000000000000\r\n\r\nx")
        .await;
    let (ok, _) = sender
        .request("LHTTP/1.0 probe\r\npublish:elsewhere\r\n\r\n")
        .await;
    assert_eq!(ok.command(), "ok");
}

#[tokio::test]
async fn requests_end_with_their_requester() {
    let server = start().await;
    let mut responder = server.client().await;
    subscribe(&mut responder, "svc").await;
    let mut requester = server.client().await;
    for i in 0..10 {
        ask(
            &mut requester,
            "svc",
            &format!("r{i}"),
            "timeout:60000\r\n",
            "x",
        )
        .await;
    }
    for _ in 0..10 {
        responder.recv().await;
    }
    assert_eq!(pending(&server), 10);
    drop(requester);
    wait_until(|| pending(&server) == 0).await;
}

#[tokio::test]
async fn pending_requests_per_connection_are_limited() {
    let server = start_with(Server::builder(config(|c| {
        c.requests.max_pending_per_inbox = 3;
    })))
    .await;
    let mut responder = server.client().await;
    subscribe(&mut responder, "svc").await;
    let mut requester = server.client().await;
    for i in 0..3 {
        ask(&mut requester, "svc", &format!("r{i}"), "", "x").await;
    }
    ask(&mut requester, "svc", "r3", "", "x").await;
    let (status, _, message) = requester.recv_error().await;
    assert_eq!(status, 429);
    assert_eq!(message.header("request-id"), Some("r3"));
}

fn pending(server: &TestServer) -> u64 {
    server.metric("pending_requests")
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reply addresses an attacker who saw `seen` would try next: the same prefix with counters,
/// in decimal and as 16 hex digits, and its last digit changed.
fn guesses_from(seen: &str) -> Vec<String> {
    let (prefix, last) = seen.rsplit_once('.').expect("a reply address has parts");
    let mut guesses: Vec<String> = (0..300)
        .flat_map(|n| [format!("{prefix}.{n}"), format!("{prefix}.{n:016x}")])
        .collect();
    for digit in "0123456789abcdef".chars() {
        guesses.push(format!("{prefix}.{}{digit}", &last[..last.len() - 1]));
    }
    guesses.retain(|g| g != seen);
    guesses
}

#[tokio::test]
async fn a_reply_address_cannot_be_guessed_from_another_one() {
    // The attacker reads a public channel the victim also asks on, and learns one of the
    // victim's reply addresses; the victim's next requests go to a service it cannot read.
    let server = start().await;
    let mut attacker = server.client().await;
    subscribe(&mut attacker, "public.svc").await;
    let mut bank = server.client().await;
    subscribe(&mut bank, "svc.bank").await;
    let mut victim = server.client().await;

    ask(&mut victim, "public.svc", "p1", "", "hello").await;
    let seen = attacker.recv().await;
    let seen = seen.header("reply-to").unwrap().to_owned();

    for i in 0..3 {
        ask(&mut victim, "svc.bank", &format!("b{i}"), "", "balance?").await;
    }
    let mut requests = Vec::new();
    for _ in 0..3 {
        requests.push(bank.recv().await);
    }
    // Every guess, before the bank answers.
    for guess in guesses_from(&seen) {
        attacker
            .send(&format!(
                "LHTTP/1.0 answer\r\npublish:{guess}\r\n\r\nforged: send money to mallory"
            ))
            .await;
    }
    let (ok, _) = attacker
        .request("LHTTP/1.0 probe\r\npublish:public.other\r\n\r\n")
        .await;
    assert_eq!(
        ok.command(),
        "ok",
        "the attacker's replies were all handled"
    );
    for request in &requests {
        let reply_to = request.header("reply-to").unwrap();
        assert!(
            !guesses_from(&seen).iter().any(|g| g == reply_to),
            "{reply_to}"
        );
        answer(&mut bank, request, "", "genuine balance").await;
    }
    for i in 0..3 {
        let reply = victim.recv().await;
        assert_eq!(reply.header("request-id"), Some(format!("b{i}").as_str()));
        assert_eq!(reply.body().as_ref(), b"genuine balance");
    }
    victim.expect_silence(200).await;
}

#[tokio::test]
async fn a_reply_address_tells_nothing_of_the_requesters_inbox() {
    let server = start().await;
    let mut victim = server.client().await;
    let (inbox_answer, _) = victim.request("LHTTP/1.0 inbox\r\n\r\n").await;
    let inbox = inbox_answer.header("inbox").unwrap().to_owned();
    let mut responder = server.client().await;
    subscribe(&mut responder, "svc").await;
    ask(&mut victim, "svc", "r1", "timeout:60000\r\n", "x").await;
    let request = responder.recv().await;
    let reply_to = request.header("reply-to").unwrap();
    assert!(!reply_to.starts_with(&inbox), "{reply_to} names {inbox}");
    // The reply address without its key is no inbox either.
    let (stem, _) = reply_to.rsplit_once('.').unwrap();
    responder
        .send(&format!("LHTTP/1.0 spam\r\npublish:{stem}\r\n\r\nspam"))
        .await;
    victim.expect_silence(300).await;
}

#[tokio::test]
async fn a_worker_forwards_a_request_and_the_next_one_answers_the_requester() {
    let server = start().await;
    let mut front = server.client().await;
    subscribe(&mut front, "front").await;
    let mut back = server.client().await;
    subscribe(&mut back, "back").await;
    let mut requester = server.client().await;
    ask(&mut requester, "front", "r1", "", "question").await;

    let request = front.recv().await;
    let address = request.header("reply-to").unwrap().to_owned();
    // The front worker hands the request on, with the right to answer it.
    let (ok, _) = front
        .request(&format!(
            "LHTTP/1.0 ask\r\npublish:back\r\nreply-to:{address}\r\n\r\nquestion, via front"
        ))
        .await;
    assert_eq!(ok.command(), "ok", "{ok:?}");
    let forwarded = back.recv().await;
    assert_eq!(forwarded.header("reply-to"), Some(address.as_str()));
    assert_eq!(forwarded.body().as_ref(), b"question, via front");
    answer(&mut back, &forwarded, "", "answer from back").await;

    let reply = requester.recv().await;
    assert_eq!(reply.header("request-id"), Some("r1"));
    assert_eq!(reply.body().as_ref(), b"answer from back");
    front.expect_silence(200).await;

    // Once answered, the request cannot be handed on again.
    let (gone, _) = front
        .request(&format!(
            "LHTTP/1.0 ask\r\npublish:back\r\nreply-to:{address}\r\n\r\nagain"
        ))
        .await;
    assert_eq!(gone.command(), "error");
    assert_eq!(gone.header("status"), Some("404"));
    back.expect_silence(200).await;
}

#[tokio::test]
async fn a_reply_may_itself_be_a_request() {
    let server = start().await;
    let mut responder = server.client().await;
    subscribe(&mut responder, "shop").await;
    let mut requester = server.client().await;
    ask(&mut requester, "shop", "r1", "", "one shirt").await;
    let request = responder.recv().await;

    // The responder answers with a question of its own.
    let reply_to = request.header("reply-to").unwrap();
    responder
        .send(&format!(
            "LHTTP/1.0 which\r\npublish:{reply_to}\r\nreply-to:\r\nrequest-id:q1\r\n\r\nwhich colour?"
        ))
        .await;
    let question = requester.recv().await;
    assert_eq!(question.command(), "which");
    assert_eq!(question.header("request-id"), Some("r1"));
    assert_eq!(question.body().as_ref(), b"which colour?");
    let back = question
        .header("reply-to")
        .expect("the nested request can be answered")
        .to_owned();
    assert!(back.starts_with("_inbox.") && back != reply_to, "{back}");

    requester
        .send(&format!("LHTTP/1.0 colour\r\npublish:{back}\r\n\r\nblue"))
        .await;
    let colour = responder.recv().await;
    assert_eq!(colour.command(), "colour");
    assert_eq!(colour.header("request-id"), Some("q1"));
    assert_eq!(colour.body().as_ref(), b"blue");
}

//! The HTTP gateway, driven by a real HTTP client: HTTP requests become requests to a queue
//! group of WebSocket workers, and their replies become the responses.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{Client, Event, TestServer, start_with};
use lhttp_server::{Config, GatewayRoute, Server, proto::Message};

fn route(timeout_ms: u64, at_least_once: bool) -> GatewayRoute {
    GatewayRoute {
        path: "/api/".into(),
        channel: "http.api".into(),
        queue: "workers".into(),
        timeout_ms,
        at_least_once,
    }
}

async fn gateway(route: GatewayRoute) -> TestServer {
    let mut config = Config::default();
    config.gateway.push(route);
    start_with(Server::builder(config)).await
}

/// A worker in the route's group with `credit`; returns work handed over while joining.
async fn worker(server: &TestServer, credit: usize) -> (Client, Vec<Message>) {
    let mut client = server.client().await;
    let (ok, early) = client
        .request(&format!(
            "LHTTP/1.0 sub\r\nsubscribe:http.api\r\nqueue:workers\r\ncredit:{credit}\r\n\r\n"
        ))
        .await;
    assert_eq!(ok.command(), "ok");
    (client, early)
}

/// The answer a test worker gives: status 201, a header, and a body naming the request.
async fn answer(client: &mut Client, request: &Message, body_prefix: &str) {
    let reply_to = request.header("reply-to").unwrap();
    let id = request.header("delivery-id").unwrap();
    let path = request.header("path").unwrap();
    let query = request.header("query").unwrap_or("");
    let body = String::from_utf8_lossy(request.body());
    client
        .send(&format!(
            "LHTTP/1.0 http-response\r\npublish:{reply_to}\r\nack:{id}\r\nstatus:201\r\nhttp-x-worker:test\r\nhttp-content-type:text/plain\r\n\r\n{body_prefix}{} {path}?{query} {body}",
            request.header("method").unwrap()
        ))
        .await;
}

/// Serves until nothing arrives for `idle_ms`.
async fn serve(mut client: Client, early: Vec<Message>, idle_ms: u64) -> (Client, usize) {
    let mut served = 0;
    for request in early {
        answer(&mut client, &request, "").await;
        served += 1;
    }
    loop {
        match tokio::time::timeout(Duration::from_millis(idle_ms), client.event()).await {
            Err(_) => return (client, served),
            Ok(Event::Message(request)) => {
                assert_eq!(request.command(), "http-request");
                answer(&mut client, &request, "").await;
                served += 1;
            }
            Ok(other) => panic!("worker got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_http_request_becomes_a_message_and_the_reply_the_response() {
    let server = gateway(route(5_000, false)).await;
    let (mut worker, _) = worker(&server, 1).await;
    let http = reqwest::Client::new();
    let call = http
        .post(server.http("/api/users/7?full=1"))
        .header("x-trace", "abc")
        .body("payload")
        .send();
    let handling = async {
        let request = worker.recv().await;
        assert_eq!(request.command(), "http-request");
        assert_eq!(request.header("method"), Some("POST"));
        assert_eq!(request.header("path"), Some("/api/users/7"));
        assert_eq!(request.header("query"), Some("full=1"));
        assert_eq!(request.header("http-x-trace"), Some("abc"));
        assert_eq!(request.header("remote-addr"), Some("127.0.0.1"));
        assert_eq!(request.header("publish"), Some("http.api"));
        assert_eq!(request.body().as_ref(), b"payload");
        answer(&mut worker, &request, "").await;
    };
    let (response, ()) = tokio::join!(call, handling);
    let response = response.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.headers()["x-worker"], "test");
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(
        response.text().await.unwrap(),
        "POST /api/users/7?full=1 payload"
    );
}

#[tokio::test]
async fn a_thousand_concurrent_requests_are_all_answered_correctly() {
    let server = gateway(route(30_000, false)).await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (client, early) = worker(&server, 50).await;
        workers.push(tokio::spawn(serve(client, early, 3_000)));
    }
    let http = reqwest::Client::new();
    let calls = (0..1000).map(|i| {
        let http = http.clone();
        let url = server.http(&format!("/api/item/{i}?n={i}"));
        async move {
            let response = http.get(url).send().await.expect("HTTP request");
            (
                i,
                response.status().as_u16(),
                response.text().await.unwrap(),
            )
        }
    });
    let results = futures_util::future::join_all(calls).await;
    for (i, status, body) in results {
        assert_eq!(status, 201, "request {i}: {body}");
        assert_eq!(body, format!("GET /api/item/{i}?n={i} "), "request {i}");
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap().1;
    }
    assert_eq!(total, 1000, "each request served once");
}

#[tokio::test]
async fn replies_in_any_order_reach_the_right_request() {
    let server = gateway(route(10_000, false)).await;
    let (mut worker, _) = worker(&server, 10).await;
    let http = reqwest::Client::new();
    let calls = futures_util::future::join_all((0..10).map(|i| {
        let http = http.clone();
        let url = server.http(&format!("/api/{i}"));
        async move { (i, http.get(url).send().await.unwrap().text().await.unwrap()) }
    }));
    let handling = async {
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(worker.recv().await);
        }
        // Last in, first answered.
        for request in held.iter().rev() {
            answer(&mut worker, request, "").await;
        }
    };
    let (results, ()) = tokio::join!(calls, handling);
    for (i, body) in results {
        assert_eq!(body, format!("GET /api/{i}? "));
    }
}

#[tokio::test]
async fn restarting_the_only_worker_under_load_fails_no_request() {
    let server = gateway(route(20_000, true)).await;
    let http = reqwest::Client::new();
    // Steady load: 300 requests, 10 at a time.
    let load = {
        let http = http.clone();
        let base = server.http("/api/");
        tokio::spawn(async move {
            let mut statuses = HashMap::new();
            for chunk in (0..300).collect::<Vec<_>>().chunks(10) {
                let calls = chunk.iter().map(|i| {
                    let http = http.clone();
                    let url = format!("{base}{i}");
                    async move { http.get(url).send().await.unwrap().status().as_u16() }
                });
                for status in futures_util::future::join_all(calls).await {
                    *statuses.entry(status).or_insert(0) += 1;
                }
            }
            statuses
        })
    };
    // The first worker serves a while, then is killed while it holds a request; a new one
    // starts a little later. Requests wait meanwhile; the held one goes to the new worker.
    let (mut first, early) = worker(&server, 1).await;
    for request in early {
        answer(&mut first, &request, "").await;
    }
    for _ in 0..100 {
        let request = first.recv().await;
        answer(&mut first, &request, "").await;
    }
    let _held = first.recv().await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (second, early) = worker(&server, 5).await;
    let (_second, served) = serve(second, early, 3_000).await;
    let statuses = load.await.unwrap();
    assert_eq!(statuses.get(&201), Some(&300), "{statuses:?}");
    assert!(served >= 199, "the new worker served the rest: {served}");
}

#[tokio::test]
async fn a_graceful_drain_hands_over_with_no_failure() {
    let server = gateway(route(20_000, false)).await;
    let (mut old, _) = worker(&server, 2).await;
    let http = reqwest::Client::new();
    let calls = futures_util::future::join_all((0..6).map(|i| {
        let http = http.clone();
        let url = server.http(&format!("/api/{i}"));
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    }));
    let handling = async {
        let a = old.recv().await;
        let b = old.recv().await;
        old.send("LHTTP/1.0 drain\r\ndrain:http.api\r\nqueue:workers\r\n\r\n")
            .await;
        answer(&mut old, &a, "").await;
        answer(&mut old, &b, "").await;
        assert_eq!(old.recv().await.command(), "drained");
        drop(old);
        let (new, early) = worker(&server, 5).await;
        serve(new, early, 1_000).await.1
    };
    let (statuses, served) = tokio::join!(calls, handling);
    assert!(statuses.iter().all(|&s| s == 201), "{statuses:?}");
    assert_eq!(served, 4);
}

#[tokio::test]
async fn no_worker_gives_503_and_a_silent_worker_504() {
    let server = gateway(route(300, false)).await;
    let http = reqwest::Client::new();
    let response = http.get(server.http("/api/x")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.text().await.unwrap().contains("no member"));

    let (_silent, _) = worker(&server, 1).await;
    let response = http.get(server.http("/api/x")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 504);
}

#[tokio::test]
async fn a_partial_answer_streams_the_response() {
    let server = gateway(route(5_000, false)).await;
    let (mut worker, _) = worker(&server, 1).await;
    let http = reqwest::Client::new();
    let call = async {
        let response = http.get(server.http("/api/stream")).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let handling = async {
        let request = worker.recv().await;
        let reply_to = request.header("reply-to").unwrap();
        for (i, partial) in [(0, true), (1, true), (2, false)] {
            let more = if partial { "partial:true\r\n" } else { "" };
            worker
                .send(&format!(
                    "LHTTP/1.0 chunk\r\npublish:{reply_to}\r\nstatus:200\r\n{more}\r\npart{i};"
                ))
                .await;
        }
    };
    let ((status, body), ()) = tokio::join!(call, handling);
    assert_eq!(status, 200);
    assert_eq!(body, "part0;part1;part2;");
}

#[tokio::test]
async fn gateway_limits_and_paths() {
    let server = gateway(route(1_000, false)).await;
    let http = reqwest::Client::new();
    let big = vec![b'x'; 70 * 1024];
    let response = http
        .post(server.http("/api/big"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    // Outside the route: not the gateway's.
    let response = http.get(server.http("/apix")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(server.metric("gateway_requests_total"), 1);
}

#[test]
fn gateway_routes_are_checked() {
    for (path, channel, queue) in [
        ("api/", "c", "q"),
        ("/api", "c", "q"),
        ("/publish/", "c", "q"),
        ("/api/", "bad channel", "q"),
        ("/api/", "_inbox.x", "q"),
        ("/api/", "c", "bad queue"),
    ] {
        let mut config = Config::default();
        config.gateway.push(GatewayRoute {
            path: path.into(),
            channel: channel.into(),
            queue: queue.into(),
            timeout_ms: 1000,
            at_least_once: false,
        });
        assert!(
            Server::builder(config).build().is_err(),
            "{path} {channel} {queue} accepted"
        );
    }
}

/// A server with two routes: `/public/` (channel `http.public`, group `pub`) and `/bank/`
/// (channel `http.bank`, group `bank`).
async fn two_routes() -> TestServer {
    let mut config = Config::default();
    for (path, channel, queue) in [
        ("/public/", "http.public", "pub"),
        ("/bank/", "http.bank", "bank"),
    ] {
        config.gateway.push(GatewayRoute {
            path: path.into(),
            channel: channel.into(),
            queue: queue.into(),
            timeout_ms: 10_000,
            at_least_once: false,
        });
    }
    start_with(Server::builder(config)).await
}

#[tokio::test]
async fn an_http_response_comes_only_from_the_worker_that_received_the_request() {
    let server = two_routes().await;
    let mut mallory = server.client().await;
    let (ok, _) = mallory
        .request("LHTTP/1.0 sub\r\nsubscribe:http.public\r\nqueue:pub\r\n\r\n")
        .await;
    assert_eq!(ok.command(), "ok");
    let mut bank = server.client().await;
    let (ok, _) = bank
        .request("LHTTP/1.0 sub\r\nsubscribe:http.bank\r\nqueue:bank\r\ncredit:3\r\n\r\n")
        .await;
    assert_eq!(ok.command(), "ok");

    // Mallory serves one public page and so learns a reply address of the gateway.
    let http = reqwest::Client::new();
    let public = http.get(server.http("/public/page")).send();
    let serve_public = async {
        let request = mallory.recv().await;
        let seen = request.header("reply-to").unwrap().to_owned();
        mallory
            .send(&format!(
                "LHTTP/1.0 r\r\npublish:{seen}\r\nack:{}\r\n\r\npublic page",
                request.header("delivery-id").unwrap()
            ))
            .await;
        seen
    };
    let (response, seen) = tokio::join!(public, serve_public);
    assert_eq!(response.unwrap().text().await.unwrap(), "public page");

    // Three bank requests wait in the bank worker; Mallory sprays guesses at them.
    let calls = futures_util::future::join_all((0..3).map(|i| {
        http.get(server.http(&format!("/bank/account/{i}")))
            .header("cookie", "session=victim")
            .send()
    }));
    let spray_then_answer = async {
        let mut requests = Vec::new();
        for _ in 0..3 {
            requests.push(bank.recv().await);
        }
        let (prefix, _) = seen.rsplit_once('.').unwrap();
        let guesses =
            (0..200).flat_map(|n| [format!("{prefix}.{n}"), format!("{prefix}.{n:016x}")]);
        for guess in guesses {
            mallory
                .send(&format!(
                    "LHTTP/1.0 r\r\npublish:{guess}\r\nhttp-set-cookie:session=mallory\r\n\r\nforged page"
                ))
                .await;
        }
        let (ok, _) = mallory
            .request("LHTTP/1.0 probe\r\npublish:elsewhere\r\n\r\n")
            .await;
        assert_eq!(ok.command(), "ok");
        for request in &requests {
            assert_eq!(request.header("http-cookie"), Some("session=victim"));
            let reply_to = request.header("reply-to").unwrap();
            bank.send(&format!(
                "LHTTP/1.0 r\r\npublish:{reply_to}\r\nack:{}\r\n\r\nbank page {}",
                request.header("delivery-id").unwrap(),
                request.header("path").unwrap()
            ))
            .await;
        }
    };
    let (responses, ()) = tokio::join!(calls, spray_then_answer);
    for (i, response) in responses.into_iter().enumerate() {
        let response = response.unwrap();
        assert!(response.headers().get("set-cookie").is_none());
        assert_eq!(
            response.text().await.unwrap(),
            format!("bank page /bank/account/{i}")
        );
    }
}

#[tokio::test]
async fn gateway_requests_reach_only_the_routes_queue_group() {
    let server = gateway(route(5_000, false)).await;
    let mut spy = server.client().await;
    for (text, what) in [
        (
            "LHTTP/1.0 sub\r\nsubscribe:http.api\r\n\r\n",
            "a plain subscription",
        ),
        (
            "LHTTP/1.0 sub\r\nsubscribe:http.api\r\nqueue:spies\r\n\r\n",
            "another queue group",
        ),
        (
            "LHTTP/1.0 http-request\r\npublish:http.api\r\nmethod:GET\r\npath:/api/admin\r\n\r\n",
            "a forged gateway request",
        ),
    ] {
        let (answer, _) = spy.request(text).await;
        assert_eq!(answer.command(), "error", "{what}: {answer:?}");
        assert_eq!(answer.header("status"), Some("403"), "{what}");
    }
    let (mut worker, _) = worker(&server, 1).await;
    let call = reqwest::Client::new()
        .get(server.http("/api/me"))
        .header("authorization", "Bearer victim-token")
        .send();
    let handling = async {
        let request = worker.recv().await;
        assert_eq!(
            request.header("http-authorization"),
            Some("Bearer victim-token")
        );
        assert_eq!(request.header("path"), Some("/api/me"));
        answer(&mut worker, &request, "").await;
    };
    let (response, ()) = tokio::join!(call, handling);
    assert_eq!(response.unwrap().status().as_u16(), 201);
    spy.expect_silence(300).await;
}

/// Sends `GET <target>` on a raw TCP connection (HTTP clients resolve `..` themselves) and
/// returns the status code.
async fn raw_get(server: &TestServer, target: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        format!("GET {target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

#[tokio::test]
async fn workers_get_the_normalised_path_and_the_raw_one_apart() {
    let server = gateway(route(5_000, false)).await;
    let (mut worker, _) = worker(&server, 1).await;
    for raw in ["/api/%2e%2e/api/./users//7", "/api/x/../users/7"] {
        let call = raw_get(&server, raw);
        let handling = async {
            let request = worker.recv().await;
            assert_eq!(request.header("path"), Some("/api/users/7"), "{raw}");
            assert_eq!(request.header("raw-path"), Some(raw));
            answer(&mut worker, &request, "").await;
        };
        let (status, ()) = tokio::join!(call, handling);
        assert_eq!(status, 201, "{raw}");
    }
    // Out of the route once normalised: no worker sees it.
    for raw in [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/%2E%2E/%2e%2e/etc/passwd",
    ] {
        assert_eq!(raw_get(&server, raw).await, 404, "{raw}");
    }
    assert_eq!(raw_get(&server, "/api/%zz").await, 400);
    worker.expect_silence(200).await;
}

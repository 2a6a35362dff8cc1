//! The server API (`/server/...`) over real HTTP and WebSocket connections: what an operator's
//! curl sees — the server's state, its channels, presence and history as JSON, disconnecting
//! a user or one client — and who may ask (the API key, loopback, other sites' pages).

mod common;
use common::{Client, TestServer, config, connect_as, history::chat, start_with};
use lhttp_server::{ChannelOptions, Config, Server};
use serde_json::{Value, json};

const SECRET: &str = "test-only hs256 secret, 32+ bytes long!";
const KEY: &str = "an api key of sufficient length";

/// A server with presence on `room.*`, history on `log.*`, HS256 tokens, and `change`.
async fn server(change: impl FnOnce(&mut Config)) -> TestServer {
    let config = config(|c| {
        c.auth.hs256_secret = Some(SECRET.into());
        c.history.store = "memory".into();
        c.channels.push(ChannelOptions {
            pattern: "room.*".into(),
            presence: true,
            ..ChannelOptions::default()
        });
        c.channels.push(ChannelOptions {
            pattern: "log.*".into(),
            history_size: 100,
            ..ChannelOptions::default()
        });
        change(c);
    });
    start_with(Server::builder(config)).await
}

/// GETs `path` and parses the JSON answer.
async fn get_json(server: &TestServer, path: &str) -> (u16, Value) {
    let (status, body) = server.get(path).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    (status, json)
}

async fn post_json(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let (status, body) = server.post(path, body.to_string()).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    (status, json)
}

#[tokio::test]
async fn info_shows_what_the_server_holds_and_its_totals() {
    let server = server(|_| {}).await;
    let mut ann = connect_as(&server, "ann").await;
    let mut bob = Client::connect(&server.url("/")).await;
    ann.subscribe("room.1").await;
    bob.subscribe("room.1 news").await;
    bob.publish("chat", "news", "hello").await;

    let (status, info) = get_json(&server, "/server/info").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["node"], Value::Null, "a single node has no node id");
    assert_eq!(info["cluster"], Value::Null);
    assert_eq!(info["draining"], false);
    assert_eq!(info["users"], 1, "ann is the one authenticated user");
    assert_eq!(info["now"]["connections"], 2);
    assert_eq!(info["now"]["channels"], 2);
    assert_eq!(info["now"]["subscriptions"], 3);
    assert_eq!(info["now"]["presence_members"], 2);
    assert_eq!(info["totals"]["messages_published"], 1);
    assert_eq!(info["totals"]["deliveries"], 1);
    assert!(info["uptime_secs"].is_u64());
}

#[tokio::test]
async fn channels_are_listed_with_their_subscribers_by_prefix_and_within_a_limit() {
    let server = server(|_| {}).await;
    let mut a = Client::connect(&server.url("/")).await;
    let mut b = Client::connect(&server.url("/")).await;
    a.subscribe("room.2 room.1 news").await;
    b.subscribe("room.1").await;

    let (status, all) = get_json(&server, "/server/channels").await;
    assert_eq!(status, 200);
    assert_eq!(all["count"], 3);
    assert_eq!(
        all["channels"],
        json!([
            {"channel": "news", "subscribers": 1},
            {"channel": "room.1", "subscribers": 2},
            {"channel": "room.2", "subscribers": 1},
        ])
    );
    let (_, rooms) = get_json(&server, "/server/channels?prefix=room.").await;
    assert_eq!(rooms["listed"], 2);
    assert_eq!(
        rooms["count"], 3,
        "count is every channel, listed those shown"
    );
    let (_, one) = get_json(&server, "/server/channels?limit=1").await;
    assert_eq!(one["listed"], 1);
    let (status, refused) = get_json(&server, "/server/channels?limit=10001").await;
    assert_eq!(status, 400);
    assert!(refused["error"].as_str().unwrap().contains("10000"));
    let (status, _) = get_json(&server, "/server/channels?limit=many").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn presence_lists_the_members_of_a_room_and_refuses_channels_without_it() {
    let server = server(|_| {}).await;
    let mut ann = connect_as(&server, "ann").await;
    ann.request("LHTTP/1.0 sub\r\nsubscribe:room.7\r\npresence-info:Ann\r\n\r\n")
        .await;

    let (status, room) = get_json(&server, "/server/presence?channel=room.7").await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["count"], 1);
    assert_eq!(room["members"][0]["user"], "ann");
    assert_eq!(room["members"][0]["info"], "Ann");
    assert_eq!(room["members"][0]["client"].as_str().unwrap().len(), 16);

    let (status, _) = get_json(&server, "/server/presence?channel=news").await;
    assert_eq!(status, 404);
    let (status, _) = get_json(&server, "/server/presence?channel=bad%20name").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn history_is_read_as_json_by_recent_or_since_an_offset() {
    let server = server(|_| {}).await;
    for text in ["one", "two", "three"] {
        server.handle.publish(&chat("log.app", text)).unwrap();
    }
    let (status, recent) = get_json(&server, "/server/history?channel=log.app&recent=2").await;
    assert_eq!(status, 200, "{recent}");
    assert_eq!(recent["offset"], 3);
    assert_eq!(recent["count"], 2);
    let messages = recent["messages"].as_array().unwrap();
    assert_eq!(messages[0]["data"], "two");
    assert_eq!(messages[0]["offset"], 2);
    assert_eq!(messages[0]["command"], "chat");
    assert!(
        messages[1]["headers"]
            .as_array()
            .unwrap()
            .contains(&json!(["publish", "log.app"]))
    );

    let epoch = recent["epoch"].as_str().unwrap();
    let (_, since) = get_json(
        &server,
        &format!("/server/history?channel=log.app&since=1&epoch={epoch}"),
    )
    .await;
    assert_eq!(since["recovered"], true);
    let texts: Vec<&str> = since["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["two", "three"]);
    let (_, lost) = get_json(
        &server,
        "/server/history?channel=log.app&since=1&epoch=another",
    )
    .await;
    assert_eq!(lost["recovered"], false);
    assert_eq!(lost["count"], 0);

    let (_, none) = get_json(&server, "/server/history?channel=news&recent=5").await;
    assert_eq!(none["count"], 0, "a channel without history keeps nothing");
    assert_eq!(none["epoch"], Value::Null);
    let (status, _) = get_json(&server, "/server/history?channel=log.app").await;
    assert_eq!(status, 400, "recent or since is needed");
}

#[tokio::test]
async fn disconnecting_a_user_closes_each_of_its_connections_and_nobody_else() {
    let server = server(|_| {}).await;
    let mut tab1 = connect_as(&server, "ann").await;
    let mut tab2 = connect_as(&server, "ann").await;
    let mut bob = connect_as(&server, "bob").await;
    for client in [&mut tab1, &mut tab2, &mut bob] {
        client.subscribe("news").await;
    }

    let (status, answer) = post_json(&server, "/server/disconnect", json!({"user": "ann"})).await;
    assert_eq!(status, 200);
    assert_eq!(answer, json!({"disconnected": 2, "cluster": false}));
    for tab in [&mut tab1, &mut tab2] {
        assert_eq!(
            tab.recv_close().await,
            (4001, "disconnected by the server".into())
        );
    }
    server.wait_connections(1).await;
    server.handle.publish(&chat("news", "still here")).unwrap();
    assert_eq!(common::body(&bob.recv().await), "still here");

    let (_, again) = post_json(&server, "/server/disconnect", json!({"user": "ann"})).await;
    assert_eq!(
        again,
        json!({"disconnected": 0, "cluster": false}),
        "ann has gone"
    );
}

#[tokio::test]
async fn one_client_is_disconnected_by_the_id_presence_shows() {
    let server = server(|_| {}).await;
    let mut first = connect_as(&server, "ann").await;
    let mut second = connect_as(&server, "ann").await;
    first.subscribe("room.1").await;
    second.subscribe("room.1").await;
    let (_, room) = get_json(&server, "/server/presence?channel=room.1").await;
    let client = room["members"][0]["client"].as_str().unwrap().to_owned();

    let (_, answer) = post_json(&server, "/server/disconnect", json!({"client": client})).await;
    assert_eq!(answer, json!({"disconnected": 1, "cluster": false}));
    server.wait_connections(1).await;
    let (_, room) = get_json(&server, "/server/presence?channel=room.1").await;
    assert_eq!(room["count"], 1);
    assert_ne!(room["members"][0]["client"], client.as_str());

    for bad in [
        json!({}),
        json!({"user": "a", "client": "b"}),
        json!({"user": ""}),
        json!([1]),
    ] {
        let (status, _) = post_json(&server, "/server/disconnect", bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
    }
}

#[tokio::test]
async fn the_api_wants_the_key_when_one_is_set_and_refuses_other_sites_pages() {
    let server = server(|c| c.server.api_key = Some(KEY.into())).await;
    let http = reqwest::Client::new();
    let url = server.http("/server/info");
    let without = http.get(&url).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let wrong = http
        .get(&url)
        .bearer_auth("not the key at all, no")
        .send()
        .await;
    assert_eq!(wrong.unwrap().status(), 401);
    let with = http.get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(with.status(), 200);
    let disconnect = http
        .post(server.http("/server/disconnect"))
        .body(r#"{"user":"ann"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(disconnect.status(), 401, "changes need the key too");

    // A page of another site, even one holding the key, gets nothing.
    let page = http
        .get(&url)
        .bearer_auth(KEY)
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 403);
}

#[test]
fn a_gateway_route_cannot_take_the_server_api_path() {
    let mut config = Config::default();
    config.gateway.push(lhttp_server::GatewayRoute {
        path: "/server/".into(),
        channel: "jobs".into(),
        queue: "workers".into(),
        timeout_ms: 1_000,
        at_least_once: false,
    });
    let error = Server::builder(config).build().err().expect("refused");
    assert!(
        error.to_string().contains("used by the server itself"),
        "{error}"
    );
}

//! Who is in a channel with presence: [`Presence`], as [`Client::presence`](crate::Client::presence)
//! returns it.

use crate::{Error, Message};

/// One member of a channel with presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The connection's random client id.
    pub client: String,
    /// The user of its token; empty without one.
    pub user: String,
    /// The `presence-info` it subscribed with.
    pub info: String,
}

/// The answer to a presence query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The channel.
    pub channel: String,
    /// Members of the channel (over the cluster).
    pub count: usize,
    /// This connection's own client id, to find itself among the members.
    pub you: String,
    /// At most the limit asked for (and the server's cap) of them.
    pub members: Vec<Member>,
}

impl Presence {
    /// Reads a `presence` answer.
    pub(crate) fn from_answer(channel: &str, answer: &Message) -> Result<Presence, Error> {
        let bad = |what: &str| Error::UnexpectedAnswer(format!("presence: {what}"));
        let count = answer
            .header("count")
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("no count"))?;
        let body: serde_json::Value =
            serde_json::from_slice(answer.body()).map_err(|_| bad("the body is not JSON"))?;
        let field = |m: &serde_json::Value, name: &str| {
            m.get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("a member without {name}")))
        };
        let members = body
            .as_array()
            .ok_or_else(|| bad("the body is not a list"))?
            .iter()
            .map(|m| {
                Ok(Member {
                    client: field(m, "client")?,
                    user: field(m, "user")?,
                    info: field(m, "info")?,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Presence {
            channel: channel.to_owned(),
            count,
            you: answer.header("client").unwrap_or_default().to_owned(),
            members,
        })
    }
}

//! The session: commands typed at a terminal (with line editing and history) or read line by
//! line from stdin, and every message that arrives meanwhile printed.

use std::{collections::BTreeMap, future::poll_fn, pin::Pin, task::Poll};

use anyhow::{Result, anyhow, bail};
use futures_util::{FutureExt as _, Stream, StreamExt as _};
use lhttp_client::{Client, ConnectionState, Incoming, Message, Subscription};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines, Stdin},
    sync::{mpsc, oneshot},
};

use crate::{
    Exit,
    format::{self, Format},
};

const HELP: &str = "\
commands:
  subscribe CHANNEL...            receive what is published to these channels
  unsubscribe CHANNEL...          stop receiving them
  publish CHANNEL TEXT            publish TEXT (command `chat`) and wait for the server's ok
  send COMMAND [-H k:v]... BODY   send any message and print the answer
  help                            this text
  quit                            leave (Ctrl-D too)
";

/// Runs the session until `quit` or the end of input. Reading from stdin (not a terminal),
/// a failed command is reported on stderr, the session goes on, and the exit code is 1.
pub(crate) async fn run(client: &Client, format: Format, terminal: bool, url: &str) -> Result<()> {
    let mut input = if terminal {
        Input::terminal()?
    } else {
        Input::Piped(BufReader::new(tokio::io::stdin()).lines())
    };
    let mut out = input.output();
    if terminal {
        out.note(&format!("connected to {url}; type `help` for the commands"));
    }
    let mut session = Session {
        client,
        format,
        subscriptions: BTreeMap::new(),
        incoming: client.incoming().await?,
    };
    let mut states = client.state_changes();
    let mut failed = false;
    let mut line_number = 0usize;
    loop {
        tokio::select! {
            line = input.next() => {
                let Some((line, ack)) = line else { break };
                line_number += 1;
                // Printing what arrived before and after each command keeps the output in the
                // order the server sent it.
                session.drain(&mut out);
                let step = session.execute(&line, &mut out).await;
                session.drain(&mut out);
                match step {
                    Ok(Step::Continue) => {}
                    Ok(Step::Quit) => break,
                    Err(e) => {
                        failed = true;
                        if terminal {
                            out.note(&format!("error: {e}"));
                        } else {
                            eprintln!("lhttp: line {line_number}: {e}");
                        }
                    }
                }
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
            }
            message = session.next_arrival() => match message {
                Some(message) => out.message(format, &message),
                None => return Err(lhttp_client::Error::Closed.into()),
            },
            Ok(()) = states.changed() => match *states.borrow_and_update() {
                ConnectionState::Disconnected => out.note("connection lost; reconnecting"),
                ConnectionState::Connected => out.note("reconnected; subscriptions restored"),
                ConnectionState::Closed => out.note("connection closed"),
            },
        }
    }
    // What already arrived (e.g. the delivery of the last `publish`) is printed before leaving.
    session.drain(&mut out);
    client.close().await;
    if failed && !terminal {
        return Err(Exit(1).into());
    }
    Ok(())
}

enum Step {
    Continue,
    Quit,
}

struct Session<'a> {
    client: &'a Client,
    format: Format,
    /// One subscription per channel, so that each can be dropped alone.
    subscriptions: BTreeMap<String, Subscription>,
    incoming: Incoming,
}

impl Session<'_> {
    async fn execute(&mut self, line: &str, out: &mut Output) -> Result<Step> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(Step::Continue);
        }
        let (word, rest) = split_word(line);
        match word {
            "subscribe" | "sub" => {
                if rest.is_empty() {
                    bail!("usage: subscribe CHANNEL...");
                }
                for channel in rest.split_whitespace() {
                    if !self.subscriptions.contains_key(channel) {
                        let subscription = self.client.subscribe([channel]).await?;
                        self.subscriptions.insert(channel.to_owned(), subscription);
                    }
                }
            }
            "unsubscribe" | "unsub" => {
                if rest.is_empty() {
                    bail!("usage: unsubscribe CHANNEL...");
                }
                for channel in rest.split_whitespace() {
                    if let Some(mut subscription) = self.subscriptions.remove(channel) {
                        // What it already received is shown, not lost.
                        while let Some(Some(message)) = subscription.next().now_or_never() {
                            out.message(self.format, &message);
                        }
                        subscription.unsubscribe().await?;
                    }
                }
            }
            "publish" | "pub" => {
                let (channel, text) = split_word(rest);
                if channel.is_empty() {
                    bail!("usage: publish CHANNEL TEXT");
                }
                self.client.publish(channel, text.to_owned()).await?;
            }
            "send" => {
                let message = parse_send(rest)?;
                let answer = self.client.request(message).await;
                // Deliveries the server sent before its answer are printed first.
                self.drain(out);
                match answer {
                    Ok(answer) => out.message(self.format, &answer),
                    Err(lhttp_client::Error::Server {
                        status,
                        reason,
                        message,
                    }) => {
                        out.message(self.format, &message);
                        bail!("server answered {status}: {reason}");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            "help" | "?" => out.note(HELP.trim_end()),
            "quit" | "exit" => return Ok(Step::Quit),
            other => bail!("unknown command {other:?}; type `help`"),
        }
        Ok(Step::Continue)
    }

    /// Prints every message that has already arrived.
    fn drain(&mut self, out: &mut Output) {
        while let Some(Some(message)) = self.next_arrival().now_or_never() {
            out.message(self.format, &message);
        }
    }

    /// The next message from any subscription or the incoming stream; `None` when the client
    /// has closed.
    async fn next_arrival(&mut self) -> Option<Message> {
        poll_fn(|cx| {
            for subscription in self.subscriptions.values_mut() {
                match Pin::new(subscription).poll_next(cx) {
                    Poll::Ready(Some(message)) => return Poll::Ready(Some(message)),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => {}
                }
            }
            Pin::new(&mut self.incoming).poll_next(cx)
        })
        .await
    }
}

/// The first word and the rest, trimmed.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (text, ""),
    }
}

/// `COMMAND [-H k:v]... BODY`: the body is the rest of the line, verbatim.
fn parse_send(text: &str) -> Result<Message> {
    let (command, mut rest) = split_word(text);
    if command.is_empty() {
        bail!("usage: send COMMAND [-H key:value]... BODY");
    }
    let mut message = Message::builder(command.to_owned());
    loop {
        let (word, after) = split_word(rest);
        if word != "-H" {
            break;
        }
        let (header, after) = split_word(after);
        let (key, value) = crate::parse_header(header).map_err(|e| anyhow!(e))?;
        message = message.header(key, value);
        rest = after;
    }
    Ok(message.body(rest.to_owned()).build()?)
}

/// Lines to execute; from a terminal, each comes with an acknowledgement that lets the editor
/// show its prompt again once the command is done.
enum Input {
    Terminal {
        lines: mpsc::Receiver<(String, oneshot::Sender<()>)>,
        printer: Option<Box<dyn rustyline::ExternalPrinter + Send>>,
    },
    Piped(Lines<BufReader<Stdin>>),
}

impl Input {
    /// Starts the line editor on its own thread (it blocks while reading).
    fn terminal() -> Result<Input> {
        let mut editor = rustyline::DefaultEditor::new()?;
        let printer = editor
            .create_external_printer()
            .ok()
            .map(|p| Box::new(p) as Box<dyn rustyline::ExternalPrinter + Send>);
        let history = std::env::var_os("HOME")
            .map(|home| std::path::PathBuf::from(home).join(".lhttp_history"));
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        let (tx, lines) = mpsc::channel(1);
        std::thread::spawn(move || {
            while let Ok(line) = editor.readline("lhttp> ") {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                    // Saved at once: the process may end right after this line (`quit`).
                    if let Some(path) = &history {
                        let _ = editor.save_history(path);
                    }
                }
                let (ack, done) = oneshot::channel();
                if tx.blocking_send((line, ack)).is_err() || done.blocking_recv().is_err() {
                    break;
                }
            }
        });
        Ok(Input::Terminal { lines, printer })
    }

    fn output(&mut self) -> Output {
        match self {
            Input::Terminal { printer, .. } => match printer.take() {
                Some(printer) => Output::Printer(printer),
                None => Output::Stdout,
            },
            Input::Piped(_) => Output::Stdout,
        }
    }

    async fn next(&mut self) -> Option<(String, Option<oneshot::Sender<()>>)> {
        match self {
            Input::Terminal { lines, .. } => lines.recv().await.map(|(l, ack)| (l, Some(ack))),
            Input::Piped(lines) => match lines.next_line().await {
                Ok(Some(line)) => Some((line, None)),
                Ok(None) => None,
                Err(e) => {
                    eprintln!("lhttp: cannot read stdin: {e}");
                    None
                }
            },
        }
    }
}

/// Where the session prints: stdout, or through the line editor so that the prompt and the
/// line being typed stay intact.
enum Output {
    Stdout,
    Printer(Box<dyn rustyline::ExternalPrinter + Send>),
}

impl Output {
    fn message(&mut self, format: Format, message: &Message) {
        match self {
            Output::Stdout => {
                let _ = format::Stdout.print(format, message);
            }
            Output::Printer(printer) => {
                let _ = printer.print(format::render(format, message));
            }
        }
    }

    /// A remark for the person (state changes, errors, help): stderr, or the editor.
    fn note(&mut self, text: &str) {
        match self {
            Output::Stdout => eprintln!("lhttp: {text}"),
            Output::Printer(printer) => {
                let _ = printer.print(format!("{text}\n"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_lines_keep_the_body_verbatim() {
        let message = parse_send("note -H from:ann -H to: bob  hello  -H world ").unwrap();
        assert_eq!(message.command(), "note");
        assert_eq!(message.header("from"), Some("ann"));
        assert_eq!(message.header("to"), Some(""));
        assert_eq!(&message.body()[..], b"bob  hello  -H world ");
    }

    #[test]
    fn send_needs_a_command() {
        assert!(parse_send("  ").is_err());
    }
}

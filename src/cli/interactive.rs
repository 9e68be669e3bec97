//! `united-hub chat`: one conversation in one terminal.
//!
//! ```text
//! united-hub chat --identity alice.id --with <bob's pubkey>
//! ```
//!
//! On start it signs in, checks the peer's key, opens (or finds) the
//! conversation and prints its last messages; then what arrives prints above
//! a `> ` prompt, and each line typed is sealed (`united-hub dm v2`) and sent
//! over the WebSocket under a client id. A line stays pending until the hub
//! acknowledges it (its answer, its push or catch-up, whichever comes first);
//! after a reconnect, which catches up `after` the last sequence shown, the
//! pending lines go out again with the same ids, so each is stored once.
//! `/quit`, the end of input (Ctrl-D) or Ctrl-C leaves.

use std::collections::HashSet;
use std::io::BufRead as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::term::Screen;
use super::{
    key_rotation_note, other_side, parse_peer, peer_key, printable, render, short, IdentityFile,
    Nodes, DEFAULT_URL,
};
use crate::client::crypto::{self, Identity};
use crate::client::{
    connect_live, read_json_in, ClientError, Events, HubClient, Incoming, WsClient,
};
use crate::json::MessageJson;
use crate::proto::{dm, Envelope, Payload};

#[derive(clap::Args)]
pub struct ChatArgs {
    /// Your identity file.
    #[arg(long)]
    identity: PathBuf,
    /// The other person's pubkey (64 hex characters).
    #[arg(long = "with", value_name = "PUBKEY")]
    peer: String,
    /// The hub: one URL, or several nodes of a cluster, comma-separated;
    /// after a lost connection the next one is tried.
    #[arg(long, default_value = DEFAULT_URL, value_delimiter = ',')]
    url: Vec<String>,
}

/// Messages of history printed on start.
const HISTORY_ON_START: usize = 20;
/// The first wait before reconnecting; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How long leaving waits for lines still on their way to be acknowledged.
const LEAVE_GRACE: Duration = Duration::from_secs(5);
/// How often the access token is checked, to refresh it before it expires.
const TOKEN_CHECK: Duration = Duration::from_secs(30);

/// The hub's answer to one send, with the line's client id.
type Answer = (String, Result<Payload, ClientError>);

/// A registered socket and its pushed events.
struct Socket {
    ws: Rc<WsClient>,
    events: Events,
}

/// A line typed here that the hub has not acknowledged yet.
struct Pending {
    /// Sent again as it is after a reconnect: same id, same ciphertext.
    request: dm::DmSendRequest,
    text: String,
}

struct Chat {
    id: Identity,
    client: HubClient,
    /// The nodes `--url` names; the client moves on after a lost socket.
    nodes: Nodes,
    peer: String,
    conversation: String,
    /// The peer's key once checked; `None` after the peer's key rotated, so
    /// that it is fetched and checked again before the next line is sealed.
    peer_key: Option<[u8; 32]>,
    /// The highest sequence of the conversation seen so far.
    last_seen: u64,
    /// In the order typed.
    pending: Vec<Pending>,
    /// Ids of lines sent from here whose messages have not come back yet
    /// (pushed or caught up): they are not printed again when they do.
    mine: HashSet<String>,
    answers: mpsc::UnboundedSender<Answer>,
    screen: Screen,
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let (id, name) = IdentityFile::load(&args.identity)?;
    let peer = parse_peer(&args.peer)?;
    let mut nodes = Nodes::new(&args.url)?;
    let client = nodes.sign_in(&id, &name).await?;
    let key = peer_key(&client, &peer).await?;
    let (conversation, _) = client
        .create_conversation(&peer)
        .await
        .with_context(|| format!("opening the conversation with {peer}"))?;
    let (answers, mut answered) = mpsc::unbounded_channel();
    let mut chat = Chat {
        id,
        client,
        nodes,
        peer,
        conversation: conversation.id.clone(),
        peer_key: Some(key),
        last_seen: 0,
        pending: Vec::new(),
        mine: HashSet::new(),
        answers,
        screen: Screen::new(),
    };
    chat.say(&format!(
        "chatting with {} ({}…) as {}; /quit or Ctrl-D leaves",
        printable(&other_side(&chat.id, &conversation).0),
        short(&chat.peer),
        printable(&name),
    ));
    let (recent, _) = chat
        .client
        .recent(&chat.conversation, HISTORY_ON_START)
        .await
        .context("reading the history")?;
    for m in &recent {
        chat.arrived(m);
    }

    // Connected before the first line is read, so that it goes out at once.
    let mut link = Link::default();
    link.attempt(&mut chat).await;
    let mut lines = stdin_lines();
    let mut token_check = tokio::time::interval(TOKEN_CHECK);
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { break };
                chat.screen.prompt();
                if line.trim() == "/quit" {
                    break;
                }
                chat.typed(&line, link.socket.as_ref().map(|s| &s.ws)).await;
            }
            event = next_event(&mut link.socket), if link.socket.is_some() => match event {
                Incoming::Envelope(envelope) => chat.pushed(*envelope),
                Incoming::Closed(code) => {
                    link.lost();
                    // A node that closed us is likely going away.
                    chat.nodes.next(&mut chat.client);
                    let code = code.map(|c| format!(" ({c})")).unwrap_or_default();
                    chat.say(&format!("(disconnected{code}; reconnecting)"));
                }
            },
            Some((id, answer)) = answered.recv() => chat.answered(&id, answer),
            _ = tokio::time::sleep_until(link.retry_at), if link.socket.is_none() => {
                link.attempt(&mut chat).await;
            }
            _ = token_check.tick() => {
                if let Some(live) = &link.socket {
                    chat.keep_token(&live.ws).await;
                }
            }
            Ok(()) = tokio::signal::ctrl_c() => break,
        }
    }
    chat.leave(link.socket, &mut answered).await;
    Ok(())
}

/// The connection to the hub, and when to try again without one.
struct Link {
    socket: Option<Socket>,
    retry_at: Instant,
    backoff: Duration,
    connected_once: bool,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            socket: None,
            retry_at: Instant::now(),
            backoff: FIRST_BACKOFF,
            connected_once: false,
        }
    }
}

impl Link {
    /// Connects (with catch-up and resends), or schedules the next try.
    async fn attempt(&mut self, chat: &mut Chat) {
        match chat.connect().await {
            Ok(live) => {
                self.socket = Some(live);
                self.backoff = FIRST_BACKOFF;
                chat.say(if self.connected_once {
                    "(reconnected)"
                } else {
                    "(connected)"
                });
                self.connected_once = true;
            }
            Err(e) => {
                // Said once, not at every try.
                if self.backoff == FIRST_BACKOFF {
                    chat.say(&format!("(cannot reach the hub: {e}; retrying)"));
                }
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                chat.nodes.next(&mut chat.client);
            }
        }
    }

    fn lost(&mut self) {
        self.socket = None;
        self.retry_at = Instant::now();
    }
}

/// The next event of the socket; never resolves without one.
async fn next_event(socket: &mut Option<Socket>) -> Incoming {
    match socket {
        Some(live) => live.events.recv().await,
        None => std::future::pending().await,
    }
}

/// Lines of standard input, read on a plain thread rather than with
/// `tokio::io::stdin`: a blocking read cannot be cancelled, and a runtime
/// that owned it would wait at exit for one more line.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    if tx
                        .send(line.trim_end_matches(['\n', '\r']).to_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    rx
}

impl Chat {
    fn say(&self, text: &str) {
        self.screen.line(text);
    }

    /// Connects and registers a socket, catches up on the conversation (and
    /// notes what came in others), and sends the pending lines again.
    async fn connect(&mut self) -> Result<Socket, ClientError> {
        let mut ws = match connect_live(&mut self.client).await {
            // Away longer than the tokens last: sign in again.
            Err(e) if e.status() == Some(401) => {
                self.client.login(&self.id, None).await?;
                connect_live(&mut self.client).await?
            }
            connected => connected?,
        };
        let events = ws
            .take_events()
            .ok_or_else(|| ClientError::Transport("a new socket without events".into()))?;
        // This conversation's queued messages are in its history too.
        for m in self.client.offline().await? {
            if m.conversation_id != self.conversation {
                self.elsewhere(&m);
            }
        }
        for m in self
            .client
            .history_after(&self.conversation, self.last_seen)
            .await?
        {
            self.arrived(&m);
        }
        let ws = Rc::new(ws);
        for p in &self.pending {
            self.submit(&ws, &p.request);
        }
        Ok(Socket { ws, events })
    }

    /// Seals a typed line to the checked key and sends it. `//` at the start
    /// sends a line that begins with `/`; other `/` lines are commands.
    async fn typed(&mut self, line: &str, ws: Option<&Rc<WsClient>>) {
        let text = match line.strip_prefix('/') {
            None => line,
            Some(rest) if rest.starts_with('/') => rest,
            Some(_) => {
                self.say(&format!(
                    "(unknown command {}: /quit leaves; start a line with // to send a /)",
                    printable(line)
                ));
                return;
            }
        };
        if text.trim().is_empty() {
            return;
        }
        let key = match self.peer_key {
            Some(key) => key,
            None => match peer_key(&self.client, &self.peer).await {
                Ok(key) => *self.peer_key.insert(key),
                Err(e) => {
                    self.say(&format!("(not sent: {e:#})"));
                    return;
                }
            },
        };
        let sealed = match crypto::seal(&self.id, &key, &self.conversation, text.as_bytes()) {
            Ok(sealed) => sealed,
            Err(e) => {
                self.say(&format!("(not sent: {e})"));
                return;
            }
        };
        let request = dm::DmSendRequest {
            id: uuid::Uuid::now_v7().to_string(),
            conversation_id: self.conversation.clone(),
            encrypted_payload: sealed.ciphertext.into(),
            nonce: sealed.nonce.to_vec().into(),
            ephemeral_pubkey: sealed.ephemeral_pubkey.to_vec().into(),
            timestamp: crate::model::now_ms(),
        };
        self.mine.insert(request.id.clone());
        match ws {
            Some(ws) => self.submit(ws, &request),
            None => self.say("(not connected: it goes out once the hub is reachable)"),
        }
        self.pending.push(Pending {
            request,
            text: text.to_owned(),
        });
    }

    /// Sends one request; its answer comes back through `answers`.
    fn submit(&self, ws: &Rc<WsClient>, request: &dm::DmSendRequest) {
        let (ws, answers, request) = (ws.clone(), self.answers.clone(), request.clone());
        actix_web::rt::spawn(async move {
            let id = request.id.clone();
            let answer = ws.call(Payload::DmSendRequest(request)).await;
            let _ = answers.send((id, answer));
        });
    }

    fn answered(&mut self, id: &str, answer: Result<Payload, ClientError>) {
        let error = match answer {
            Ok(Payload::DmSendResponse(dm::DmSendResponse { message: Some(m) })) => {
                return self.acknowledged(id, m.server_sequence);
            }
            // The socket went first: the line goes out again on reconnect.
            Err(ClientError::Transport(_)) => return,
            Ok(other) => format!("unexpected answer {other:?}"),
            Err(e) => e.to_string(),
        };
        if let Some(pos) = self.pending.iter().position(|p| p.request.id == id) {
            let line = self.pending.remove(pos);
            self.mine.remove(id);
            self.say(&format!(
                "(not sent: \"{}\": {error})",
                printable(&line.text)
            ));
        }
    }

    fn acknowledged(&mut self, id: &str, sequence: u64) {
        if let Some(pos) = self.pending.iter().position(|p| p.request.id == id) {
            self.pending.remove(pos);
            self.say(&format!("(#{sequence} sent)"));
        }
    }

    fn pushed(&mut self, envelope: Envelope) {
        match envelope.payload {
            Some(Payload::DmMessageEvent(dm::DmMessageEvent { message: Some(m) })) => {
                let m = MessageJson::from_proto(&m);
                if m.conversation_id == self.conversation {
                    self.arrived(&m);
                } else {
                    self.elsewhere(&m);
                }
            }
            Some(Payload::DmKeyRotatedEvent(e)) => self.key_rotated(&e),
            _ => {}
        }
    }

    /// A message of this conversation, from a push, history or catch-up.
    fn arrived(&mut self, m: &MessageJson) {
        // Pushes that arrive during catch-up repeat what it returned.
        if m.server_sequence <= self.last_seen {
            return;
        }
        self.last_seen = m.server_sequence;
        if self.mine.remove(&m.id) {
            self.acknowledged(&m.id, m.server_sequence);
        } else {
            self.say(&render("", m, &read_json_in(&self.id, m, &self.peer), None));
        }
    }

    /// A message of another conversation: noted, read with `history`.
    fn elsewhere(&self, m: &MessageJson) {
        if m.sender_pubkey != self.id.public_key_hex() {
            self.say(&format!(
                "({} wrote to you in another conversation: united-hub history --with {})",
                printable(&m.sender_display_name),
                m.sender_pubkey
            ));
        }
    }

    /// A peer's new key is checked now and fetched again before the next line.
    fn key_rotated(&mut self, e: &dm::DmKeyRotatedEvent) {
        let note = key_rotation_note(&self.id, e);
        let ours = e.user_pubkey == self.id.public_key_hex();
        if e.user_pubkey == self.peer {
            self.peer_key = None;
        }
        match note {
            Ok(note) if ours || e.user_pubkey == self.peer => self.say(&note),
            Ok(_) => {}
            Err(warning) => self.say(&warning),
        }
    }

    /// Refreshes the access token before it expires and hands the new one
    /// to the open session, so that the hub does not close it.
    async fn keep_token(&mut self, ws: &WsClient) {
        match self.client.refresh_if_needed().await {
            Ok(false) => {}
            Ok(true) => {
                let token = self.client.access_token().unwrap_or_default().to_owned();
                if let Err(e) = ws.authenticate(&token).await {
                    self.say(&format!("(cannot renew the session: {e})"));
                }
            }
            Err(e) => self.say(&format!("(cannot refresh the login: {e})")),
        }
    }

    /// Waits a little for lines still on their way, then closes the socket.
    async fn leave(
        &mut self,
        socket: Option<Socket>,
        answered: &mut mpsc::UnboundedReceiver<Answer>,
    ) {
        if let Some(mut live) = socket {
            let deadline = Instant::now() + LEAVE_GRACE;
            while !self.pending.is_empty() {
                tokio::select! {
                    Some((id, answer)) = answered.recv() => self.answered(&id, answer),
                    event = live.events.recv() => match event {
                        Incoming::Envelope(envelope) => self.pushed(*envelope),
                        Incoming::Closed(_) => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            live.ws.close();
        }
        if !self.pending.is_empty() {
            self.say(&format!(
                "({} line(s) not acknowledged by the hub: they may not have been sent)",
                self.pending.len()
            ));
        }
        self.screen.close();
    }
}

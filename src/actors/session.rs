//! `WsSession`: one actor per WebSocket connection.
//!
//! It owns the socket: it decodes binary `Envelope` frames, runs each request
//! as its own future (so requests pipeline and may answer in any order),
//! writes pushed events ([`Deliver`]) in the order it receives them, and keeps
//! the heartbeat. Its mailbox is bounded by `--session-buffer`; a session
//! that falls that far behind is closed with 1013 by the registry.
//!
//! Only this file and `http::ws` know about actix-web-actors.
//!
//! Why it is this long: one actor and its outbound stream, the session's
//! whole life (heartbeat, token expiry, fragments, bad frames, answers and
//! their budget); split, its invariants would spread over files.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, CloseCode, CloseReason, HandshakeError, ProtocolError};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;

use super::registry::{
    close_code, Admission, Deliver, Kick, Refused, SessionHandle, SessionRegistry, SessionSink,
};
use super::ws_codec;
use crate::answers::AnswerPermit;
use crate::auth::JwtKeys;
use crate::cluster::WatchGuard;
use crate::error::HubError;
use crate::metrics::Metrics;
use crate::model::Pubkey;
use crate::service::dm::DmService;

/// Bad frames in a row (text, undecodable, server-only) before closing with 1008.
pub const MAX_BAD_FRAMES: u32 = 10;
/// Continuation frames one message may have.
pub const MAX_FRAGMENTS: usize = 4096;
/// Requests one session may have in flight; past that a request gets 429.
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long a closing session waits for its in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A message being assembled from continuation frames.
struct Fragments {
    buf: BytesMut,
    binary: bool,
    count: usize,
}

/// What every session of the node shares: the DM service its requests
/// run through, the token keys (an in-band `AuthRequest`), the registry, the
/// metrics and the WebSocket settings. Built once at start.
pub struct SessionContext {
    pub dm: Arc<DmService>,
    pub jwt: Arc<JwtKeys>,
    pub registry: Arc<SessionRegistry>,
    pub metrics: Arc<Metrics>,
    /// `--ping-interval`.
    pub ping_interval: Duration,
    /// `--idle-timeout`.
    pub idle_timeout: Duration,
    /// `--max-frame-bytes`.
    pub max_frame_bytes: usize,
    /// `--session-buffer`: events a session may lag.
    pub session_buffer: usize,
}

pub struct WsSession {
    /// Unique per hub; the registry's key for this session.
    id: u64,
    user: Pubkey,
    state: Arc<SessionContext>,
    /// Last time the client sent anything (a pong included).
    last_heard: Instant,
    fragments: Option<Fragments>,
    /// Bad frames since the last good one.
    bad_frames: u32,
    /// Requests whose answer has not been written yet.
    in_flight: usize,
    /// Set when asked to close once in-flight requests have answered.
    closing: Option<u16>,
    /// Cluster mode: keeps this node subscribed to the user's events.
    _watch: Option<WatchGuard>,
    /// This session's place in the per-user and per-IP caps.
    _admission: Admission,
    /// Bytes pushed to this session and not yet handed to the socket.
    pending_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Budget reservations of answers queued for the socket; the
    /// [`OutboundStream`] gives them back once the socket has taken them.
    held_answers: HeldAnswers,
    /// When the access token expires (Unix seconds); the session closes
    /// then unless an `AuthRequest` brings a fresh token.
    expires_at: u64,
    /// `expires_at` on this process's clock.
    expiry_deadline: Instant,
    /// When the heartbeat next pings (or closes an idle session).
    next_ping: Instant,
}

impl WsSession {
    pub fn new(
        user: Pubkey,
        expires_at: u64,
        state: Arc<SessionContext>,
        admission: Admission,
        watch: Option<WatchGuard>,
    ) -> Self {
        WsSession {
            id: state.registry.next_session_id(),
            user,
            state,
            last_heard: Instant::now(),
            fragments: None,
            bad_frames: 0,
            in_flight: 0,
            closing: None,
            _watch: watch,
            _admission: admission,
            pending_bytes: Arc::default(),
            held_answers: Arc::default(),
            expires_at,
            expiry_deadline: deadline_of(expires_at),
            next_ping: Instant::now(),
        }
    }

    /// The session's one timer: it wakes at the next ping or at the token's
    /// expiry, whichever comes first, and sets itself again. One timer, not
    /// one for each: a timer costs each session 100-200 bytes, and every
    /// idle session holds its timers.
    fn schedule_tick(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let at = self.next_ping.min(self.expiry_deadline);
        ctx.run_later(at.saturating_duration_since(Instant::now()), |act, ctx| {
            act.tick(ctx)
        });
    }

    /// Closes the session when its token has expired; otherwise pings every
    /// `--ping-interval` and closes after `--idle-timeout` of silence.
    fn tick(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let now = Instant::now();
        if now >= self.expiry_deadline {
            return self.close(
                ctx,
                close_code::TOKEN_EXPIRED,
                "the access token expired; reconnect with a fresh one",
            );
        }
        if now >= self.next_ping {
            if self.last_heard.elapsed() >= self.state.idle_timeout {
                return self.close(ctx, 1000, "idle timeout");
            }
            ctx.ping(b"");
            // From the last ping's slot, unless the hub fell a whole
            // interval behind: then from now, not a burst of pings.
            let interval = self.state.ping_interval;
            self.next_ping += interval;
            if self.next_ping <= now {
                self.next_ping = now + interval;
            }
        }
        self.schedule_tick(ctx);
    }

    /// In-band re-authentication: a fresh token for the same user extends
    /// the session.
    fn reauthenticate(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        request_id: &str,
        token: &str,
    ) {
        let answer = match self.state.jwt.verify_with_expiry(token) {
            Ok((user, _)) if user != self.user => Err(HubError::Unauthorized(
                "the token is for another user than this session's",
            )),
            Ok((_, expires_at)) => {
                self.expires_at = self.expires_at.max(expires_at);
                // The timer, set for the old expiry at the latest, wakes and
                // sets itself for the new one.
                self.expiry_deadline = deadline_of(self.expires_at);
                Ok(crate::proto::encode_envelope(
                    request_id.to_owned(),
                    crate::proto::Payload::AuthResponse(crate::proto::ws::AuthResponse {
                        expires_at: self.expires_at,
                    }),
                ))
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(bytes) => ctx.binary(bytes),
            Err(e) => ctx.binary(ws_codec::error_envelope(request_id, &e)),
        }
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        tracing::debug!(session = self.id, code, reason, "closing session");
        ctx.close(Some(CloseReason {
            code: CloseCode::from(code),
            description: Some(reason.to_owned()),
        }));
        ctx.stop();
    }

    /// Starts the heartbeat. Each session's first ping comes at its own
    /// offset within the interval (after one interval and that offset), so
    /// sessions that connected together do not all ping together (a burst of
    /// thousands of pings at once showed as a latency spike under load).
    fn heartbeat(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let interval = self.state.ping_interval;
        let spread = interval.as_millis().max(1) as u64;
        let offset = Duration::from_millis(self.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) % spread);
        self.next_ping = Instant::now() + offset + interval;
        self.schedule_tick(ctx);
    }

    /// Answers a frame the hub cannot use; closes after too many in a row.
    fn bad_frame(&mut self, ctx: &mut ws::WebsocketContext<Self>, request_id: &str, why: &str) {
        self.bad_frames += 1;
        ctx.binary(ws_codec::error_envelope(
            request_id,
            &HubError::invalid(why),
        ));
        if self.bad_frames >= MAX_BAD_FRAMES {
            self.close(ctx, close_code::POLICY, "too many bad frames");
        }
    }

    fn on_message(&mut self, ctx: &mut ws::WebsocketContext<Self>, data: Bytes) {
        let (request_id, payload) = match ws_codec::decode_frame(data) {
            Ok(frame) => frame,
            Err(bad) => return self.bad_frame(ctx, &bad.request_id, bad.why),
        };
        self.bad_frames = 0;
        if let crate::proto::Payload::AuthRequest(auth) = &payload {
            return self.reauthenticate(ctx, &request_id, &auth.access_token);
        }
        if self.closing.is_some() {
            let err = HubError::ShuttingDown;
            ctx.binary(ws_codec::error_envelope(&request_id, &err));
            return;
        }
        if self.in_flight >= MAX_IN_FLIGHT {
            let err = HubError::RateLimited { retry_after: 1 };
            ctx.binary(ws_codec::error_envelope(&request_id, &err));
            return;
        }
        self.in_flight += 1;
        let started = std::time::Instant::now();
        let request = ws_codec::handle(
            self.state.dm.clone(),
            self.user.clone(),
            request_id,
            payload,
        );
        request
            .into_actor(self)
            .map(move |(answer, permit), act, ctx| {
                (act.state.metrics.stages.ws_request).observe(started.elapsed().as_secs_f64());
                ctx.binary(answer);
                if let Some(permit) = permit {
                    lock(&act.held_answers).push(permit);
                }
                act.in_flight -= 1;
                if let (Some(code), 0) = (act.closing, act.in_flight) {
                    act.close(ctx, code, "the hub is shutting down");
                }
            })
            .spawn(ctx);
    }

    fn on_continuation(&mut self, ctx: &mut ws::WebsocketContext<Self>, item: Item) {
        let max = self.state.max_frame_bytes;
        let binary = matches!(item, Item::FirstBinary(_));
        let (chunk, last) = match item {
            Item::FirstText(b) | Item::FirstBinary(b) => {
                if self.fragments.is_some() {
                    return self.close(ctx, 1002, "a new message began inside a fragmented one");
                }
                self.fragments = Some(Fragments {
                    buf: BytesMut::new(),
                    binary,
                    count: 0,
                });
                (b, false)
            }
            Item::Continue(b) => (b, false),
            Item::Last(b) => (b, true),
        };
        let Some(fragments) = self.fragments.as_mut() else {
            return self.close(ctx, 1002, "a continuation frame without a first frame");
        };
        fragments.count += 1;
        if fragments.buf.len() + chunk.len() > max || fragments.count > MAX_FRAGMENTS {
            self.fragments = None;
            return self.close(ctx, close_code::TOO_BIG, "message too big");
        }
        fragments.buf.extend_from_slice(&chunk);
        if last {
            let Some(done) = self.fragments.take() else {
                return;
            };
            if done.binary {
                self.on_message(ctx, done.buf.freeze());
            } else {
                self.bad_frame(
                    ctx,
                    "",
                    "text frames are not accepted; send binary Envelopes",
                );
            }
        }
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.state.session_buffer);
        let handle = SessionHandle {
            id: self.id,
            sink: Arc::new(ctx.address()),
            pending_bytes: self.pending_bytes.clone(),
        };
        if !self.state.registry.register(&self.user, handle) {
            return self.close(ctx, close_code::GOING_AWAY, "the hub is shutting down");
        }
        tracing::info!(session = self.id, user = ?self.user, "session started");
        self.heartbeat(ctx);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.state.registry.unregister(&self.user, self.id);
        tracing::info!(session = self.id, "session ended");
        Running::Stop
    }
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Binary(data)) => {
                if self.fragments.is_some() {
                    return self.close(ctx, 1002, "a new message began inside a fragmented one");
                }
                self.on_message(ctx, data)
            }
            Ok(ws::Message::Text(_)) => self.bad_frame(
                ctx,
                "",
                "text frames are not accepted; send binary Envelopes",
            ),
            Ok(ws::Message::Continuation(item)) => self.on_continuation(ctx, item),
            Ok(ws::Message::Ping(data)) => ctx.pong(&data),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                // Leave the registry first, so new pushes go elsewhere (or
                // offline); what already waits in the mailbox is written
                // before the close, since `CloseAfterDrain` queues behind it.
                self.state.registry.unregister(&self.user, self.id);
                ctx.address().do_send(CloseAfterDrain(reason));
            }
            Err(ProtocolError::Overflow) => self.close(ctx, close_code::TOO_BIG, "message too big"),
            Err(err) => {
                tracing::debug!(session = self.id, error = %err, "protocol error");
                self.close(ctx, 1002, "protocol error");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The client's side of the stream ended.
        ctx.stop();
    }
}

impl Handler<Deliver> for WsSession {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        self.pending_bytes
            .fetch_sub(msg.event.len(), std::sync::atomic::Ordering::AcqRel);
        (self.state.metrics.stages.to_session).observe(msg.queued_at.elapsed().as_secs_f64());
        ctx.binary(msg.event);
    }
}

/// Closes the session once everything queued before it was written.
#[derive(Message)]
#[rtype(result = "()")]
struct CloseAfterDrain(Option<CloseReason>);

impl Handler<CloseAfterDrain> for WsSession {
    type Result = ();
    fn handle(&mut self, msg: CloseAfterDrain, ctx: &mut Self::Context) {
        ctx.close(msg.0);
        ctx.stop();
    }
}

impl Handler<Kick> for WsSession {
    type Result = ();
    fn handle(&mut self, msg: Kick, ctx: &mut Self::Context) {
        if msg.drain && self.in_flight > 0 {
            self.closing = Some(msg.code);
            ctx.run_later(DRAIN_TIMEOUT, move |act, ctx| {
                act.close(ctx, msg.code, "the hub is shutting down")
            });
        } else {
            let reason = if msg.code == close_code::TRY_AGAIN_LATER {
                "too slow: try again later"
            } else {
                "the hub is shutting down"
            };
            self.close(ctx, msg.code, reason);
        }
    }
}

impl SessionSink for Addr<WsSession> {
    fn deliver(&self, msg: Deliver) -> Result<(), Refused> {
        self.try_send(msg).map_err(|e| match e {
            SendError::Full(_) => Refused::Full,
            SendError::Closed(_) => Refused::Closed,
        })
    }

    fn kick(&self, msg: Kick) {
        self.do_send(msg);
    }
}

/// Answer reservations whose bytes wait in the session's outbound queue.
type HeldAnswers = Arc<Mutex<Vec<AnswerPermit>>>;

fn lock(held: &HeldAnswers) -> std::sync::MutexGuard<'_, Vec<AnswerPermit>> {
    held.lock().unwrap_or_else(|e| e.into_inner())
}

impl WsSession {
    /// Answers the upgrade and starts the session, its outbound bytes
    /// behind an [`OutboundStream`].
    pub fn start(
        self,
        req: &HttpRequest,
        stream: web::Payload,
        max_frame_bytes: usize,
    ) -> Result<HttpResponse, HandshakeError> {
        let mut response = ws::handshake(req)?;
        let held = self.held_answers.clone();
        let codec = actix_http::ws::Codec::new().max_size(max_frame_bytes);
        let inner = ws::WebsocketContext::with_codec(self, stream, codec);
        Ok(response.streaming(OutboundStream {
            inner: Box::pin(inner),
            held,
            in_transit: Vec::new(),
        }))
    }
}

/// The session's outbound bytes as actix-web writes them to the socket.
///
/// Each poll runs the session and hands over everything it queued, so the
/// answers whose reservations are held were all in the chunk just handed
/// over. actix-web polls again only once its write buffer has drained below
/// its limit: that is when those reservations go back. A client that stops
/// reading keeps them, so its user's budget, not the node's memory, runs out.
struct OutboundStream<S> {
    inner: Pin<Box<S>>,
    held: HeldAnswers,
    /// Reservations of the answers in the last chunk handed over.
    in_transit: Vec<AnswerPermit>,
}

impl<S, E> Stream for OutboundStream<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.in_transit.clear();
        let next = this.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(_))) = &next {
            std::mem::swap(&mut this.in_transit, &mut lock(&this.held));
        }
        next
    }
}

/// `expires_at` (Unix seconds) as an instant on this process's clock.
/// (Tokens are the hub's own, minutes long; a year caps the arithmetic.)
fn deadline_of(expires_at: u64) -> Instant {
    const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
    let left_ms = expires_at
        .saturating_mul(1000)
        .saturating_sub(crate::model::now_ms())
        .min(YEAR_MS);
    Instant::now() + Duration::from_millis(left_ms)
}

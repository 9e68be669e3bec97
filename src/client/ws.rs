//! `WsClient`: one WebSocket to the hub.
//!
//! Requests get a fresh `request_id` and resolve when the response with that
//! id arrives, so any number can be in flight (pipelined) and answers may
//! come in any order. Everything else the hub sends (pushed events, errors
//! for frames that had no id, the close) comes out of [`WsClient::next`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use awc::ws::{Frame, Message};
use futures_util::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use super::ClientError;
use crate::proto::{Envelope, Payload};

/// Largest frame the client accepts: a history or offline page, which the
/// hub keeps below 4 MiB (contract §8), plus room.
const MAX_FRAME: usize = crate::model::MAX_PAGE_BYTES + 64 * 1024;

/// What the hub sent that was not the answer to a pending request.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Envelope(Box<Envelope>),
    /// The socket closed; the close code, if the hub sent one.
    Closed(Option<u16>),
}

type Pending = Rc<RefCell<HashMap<String, oneshot::Sender<Envelope>>>>;

pub struct WsClient {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    /// `None` once handed out by [`WsClient::take_events`].
    incoming: Option<Events>,
    next_id: Cell<u64>,
}

/// The stream of what the hub pushes, apart from answers to requests.
pub struct Events(mpsc::UnboundedReceiver<Incoming>);

impl Events {
    /// The next pushed event, or `Closed` once the socket is gone.
    pub async fn recv(&mut self) -> Incoming {
        self.0.recv().await.unwrap_or(Incoming::Closed(None))
    }

    /// The next pushed event (or close), waiting at most `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Incoming> {
        tokio::time::timeout(wait, self.0.recv())
            .await
            .ok()
            .flatten()
    }
}

impl WsClient {
    /// Connects with `Authorization: Bearer <token>`.
    pub async fn connect(ws_url: &str, token: &str) -> Result<WsClient, ClientError> {
        Self::connect_with(ws_url, Some(token)).await
    }

    /// Connects to `url` (which may carry `?access_token=`), with an optional
    /// bearer header. A refused upgrade is `ClientError::Status`.
    pub async fn connect_with(url: &str, bearer: Option<&str>) -> Result<WsClient, ClientError> {
        Self::connect_from(url, bearer, None).await
    }

    /// [`WsClient::connect_with`] from the local address `source` (the
    /// system's choice if `None`): the load generator spreads many sessions
    /// over several loopback addresses, each of which has only so many ports.
    pub async fn connect_from(
        url: &str,
        bearer: Option<&str>,
        source: Option<std::net::IpAddr>,
    ) -> Result<WsClient, ClientError> {
        let mut connector = super::connector();
        if let Some(source) = source {
            connector = connector.local_address(source);
        }
        let mut req = awc::Client::builder()
            .connector(connector)
            .timeout(Duration::from_secs(30))
            .finish()
            .ws(url)
            .max_frame_size(MAX_FRAME);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let (_, framed) = match req.connect().await {
            Ok(ok) => ok,
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
                return Err(ClientError::Status {
                    status: status.as_u16(),
                    code: String::new(),
                    message: "upgrade refused".into(),
                })
            }
            Err(e) => return Err(ClientError::Transport(e.to_string())),
        };
        let (mut sink, mut stream) = framed.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (in_tx, incoming) = mpsc::unbounded_channel();
        let pending: Pending = Rc::default();

        actix_web::rt::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                let closing = matches!(msg, Message::Close(_));
                if sink.send(msg).await.is_err() || closing {
                    break;
                }
            }
        });

        let reader_pending = pending.clone();
        // Weak, so that dropping the client ends the writer (and the socket).
        let pong = out.downgrade();
        actix_web::rt::spawn(async move {
            let code = loop {
                match stream.next().await {
                    Some(Ok(Frame::Binary(bytes))) => {
                        let Ok(envelope) = Envelope::decode(bytes) else {
                            continue;
                        };
                        let waiter = (!envelope.request_id.is_empty())
                            .then(|| reader_pending.borrow_mut().remove(&envelope.request_id))
                            .flatten();
                        match waiter {
                            Some(tx) => {
                                let _ = tx.send(envelope);
                            }
                            None => {
                                let _ = in_tx.send(Incoming::Envelope(Box::new(envelope)));
                            }
                        }
                    }
                    Some(Ok(Frame::Ping(data))) => {
                        if let Some(out) = pong.upgrade() {
                            let _ = out.send(Message::Pong(data));
                        }
                    }
                    Some(Ok(Frame::Close(reason))) => break reason.map(|r| u16::from(r.code)),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break None,
                }
            };
            reader_pending.borrow_mut().clear();
            let _ = in_tx.send(Incoming::Closed(code));
        });

        Ok(WsClient {
            out,
            pending,
            incoming: Some(Events(incoming)),
            next_id: Cell::new(1),
        })
    }

    /// Sends a request and waits for the envelope that answers it.
    pub async fn request(&self, payload: Payload) -> Result<Envelope, ClientError> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let request_id = format!("r{id}");
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(request_id.clone(), tx);
        let envelope = Envelope {
            request_id,
            payload: Some(payload),
        };
        self.send_raw(Message::Binary(envelope.encode_to_vec().into()))?;
        rx.await
            .map_err(|_| ClientError::Transport("the socket closed before the answer".into()))
    }

    /// Sends a request; an `ErrorResponse` answer becomes `ClientError::Status`.
    pub async fn call(&self, payload: Payload) -> Result<Payload, ClientError> {
        let answer = self.request(payload).await?;
        match answer.payload {
            Some(Payload::Error(e)) => Err(ClientError::Status {
                status: e.code as u16,
                code: e.error_code,
                message: e.message,
            }),
            Some(other) => Ok(other),
            None => Err(ClientError::Decode("an answer without payload".into())),
        }
    }

    /// Re-authenticates the session with a fresh access token (for the same
    /// user), so that the hub does not close it when the first one expires.
    /// Returns the session's new expiry (Unix seconds).
    pub async fn authenticate(&self, access_token: &str) -> Result<u64, ClientError> {
        match self
            .call(Payload::AuthRequest(crate::proto::ws::AuthRequest {
                access_token: access_token.to_owned(),
            }))
            .await?
        {
            Payload::AuthResponse(r) => Ok(r.expires_at),
            _ => Err(ClientError::Decode("expected an AuthResponse".into())),
        }
    }

    /// Sends any frame as it is (for tests of the hub's framing rules).
    pub fn send_raw(&self, msg: Message) -> Result<(), ClientError> {
        self.out
            .send(msg)
            .map_err(|_| ClientError::Transport("the socket is closed".into()))
    }

    /// The next pushed event (or close), waiting at most `wait`. `None`
    /// after `wait`, or at once if the events were taken.
    pub async fn next(&mut self, wait: Duration) -> Option<Incoming> {
        self.incoming.as_mut()?.next(wait).await
    }

    /// Hands the event stream out, so one task can read events while others
    /// make requests through a shared `&WsClient`.
    pub fn take_events(&mut self) -> Option<Events> {
        self.incoming.take()
    }

    /// Closes the socket normally.
    pub fn close(&self) {
        let _ = self
            .out
            .send(Message::Close(Some(awc::ws::CloseCode::Normal.into())));
    }
}

impl Drop for WsClient {
    fn drop(&mut self) {
        self.close();
    }
}

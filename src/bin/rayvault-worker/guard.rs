//! The middleware every request passes first: header-size limit, body-size
//! limit, then authentication. Only `GET /health` skips authentication
//! (but not the refusal of a credential in the query string); loopback
//! callers get no exemption.
//!
//! The body is read here (up to `worker.max_body_bytes`) because the
//! signature covers its hash; it is put back for the handler. A blob upload
//! is the exception: its body can be gigabytes, so the signed body hash is
//! the digest named in the path, and the handler refuses the upload unless
//! the bytes hash to exactly that digest.

use crate::apierror::ApiError;
use crate::state::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::{Error, HttpMessage};
use futures_util::StreamExt;
use rayvault::auth::{AuthError, Verified};
use rayvault::protocol::{self, ApiCode};
use rayvault::store::nonces::RequestNonce;

/// Query parameters that look like a credential; refused outright because
/// URLs end up in logs.
const CREDENTIAL_PARAMS: [&str; 5] = ["token", "access_token", "auth", "secret", "auth_token"];

/// Runs the checks, then the handler.
pub async fn guard(mut req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Err(ApiError::internal("request setup", "application state missing").into());
    };
    #[cfg(target_os = "linux")]
    crate::direct::count_request(req.request());
    check_header_size(&req, state.limits.max_header_bytes)?;
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    // Checked before the `/health` exemption: a secret in a URL is refused
    // on every route, so a client that puts it there learns so at once.
    if has_credential_param(&query) {
        // The value is never logged, only the fact.
        tracing::warn!(%path, "refused a request carrying a credential in the query string");
        rayvault::metrics::worker().auth_refusal("credential in query string");
        return Err(ApiError::auth_invalid().into());
    }
    if method == "GET" && path == "/health" {
        return next.call(req).await;
    }
    // Refuse what the header alone shows to be unusable before reading a
    // body, so a peer without a usable credential can neither make us
    // buffer up to max_body_bytes nor hold a connection by never sending it.
    let headers = req.headers().clone();
    let auth: Vec<&[u8]> = headers.get_all(header::AUTHORIZATION).map(|v| v.as_bytes()).collect();
    if let Err(AuthError::Invalid(reason)) = state.verifier.precheck(&auth) {
        tracing::warn!(%method, %path, peer = ?req.peer_addr(), reason, "refused: {}", protocol::AUTH_INVALID_MESSAGE);
        rayvault::metrics::worker().auth_refusal(reason);
        return Err(ApiError::auth_invalid().into());
    }
    let body_sha256 = match blob_upload_digest(&method, &path) {
        Some(d) => d,
        None => {
            let limit = state.limits.body_timeout;
            let body = tokio::time::timeout(limit, read_limited(&mut req, state.limits.max_body_bytes))
                .await
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "the request body did not arrive within {} s (worker.body_timeout_s); send it with the request",
                        limit.as_secs()
                    ))
                })??;
            let digest = if body.len() > crate::handlers::INLINE_WORK_BYTES {
                let b = body.clone();
                web::block(move || protocol::sha256_hex(&b)).await.map_err(ApiError::from)?
            } else {
                protocol::sha256_hex(&body)
            };
            req.set_payload(actix_web::dev::Payload::from(body));
            digest
        }
    };
    let now = rayvault::auth::unix_now();
    match state.verifier.verify(&auth, &method, &path, &query, &body_sha256, now) {
        Ok(Verified::Hmac { kid, previous, nonce, nonce_expires }) => {
            if previous {
                tracing::warn!(%kid, "request signed with the PREVIOUS cluster key; finish the rotation by updating the controller's RAYVAULT_CLUSTER_SECRET");
            }
            // The nonce is recorded durably so that a request captured
            // before a restart (even kill -9) cannot be replayed after it.
            // The request runs while that write commits, and its answer
            // waits for the commit: no request is answered before its
            // nonce is durable. This is safe for requests that change
            // state too, because
            // - a replay is refused before this point by the verifier's
            //   in-memory cache, which holds every live nonce (those of
            //   the previous run are loaded at start-up), so a handler
            //   never runs for a replayed nonce;
            // - the store's commit queue applies writes in the order they
            //   were queued, so whatever the handler writes commits in the
            //   nonce's transaction or a later one, never without it.
            // A submission goes further: its handler records the nonce in
            // the submission's own transaction (one sync for both), and
            // the nonce is recorded here after the handler only when the
            // handler did not take it (a refused submission).
            let request_nonce = RequestNonce { nonce, expires: nonce_expires, now };
            req.extensions_mut().insert(Authenticated);
            // A download records its nonce itself too: one sent by the
            // kernel (`direct`) goes out before the handler returns.
            if (method == "POST" && path == "/jobs") || is_download(&method, &path) {
                let slot = NonceSlot::new(request_nonce);
                req.extensions_mut().insert(slot.clone());
                let answer = next.call(req).await;
                slot.record_now(&state.env.store).await?;
                return answer;
            }
            // The nonce may wait a moment for company: a long-poll's
            // nonce then shares the commit of the job's end (one sync
            // instead of two). An answer ready first asks for the commit
            // at once.
            // The handler must not answer on its own (see `direct`): this
            // nonce is recorded here, after it.
            req.extensions_mut().insert(NonceAfterHandler);
            let recorded = state.env.store.record_nonce_patient(&request_nonce.nonce, request_nonce.expires, now, NONCE_PATIENCE);
            let mut recorded = std::pin::pin!(recorded);
            let answer = next.call(req).await;
            let outcome = match futures_util::FutureExt::now_or_never(recorded.as_mut()) {
                Some(r) => r,
                None => {
                    state.env.store.hurry();
                    recorded.await
                }
            };
            nonce_outcome(outcome)?;
            return answer;
        }
        Ok(Verified::Plain) => {
            tracing::warn!(%path, "request authenticated with the plain-token fallback; switch the controller to HMAC (unset RAYVAULT_ALLOW_PLAIN_FALLBACK)")
        }
        Err(AuthError::Invalid(reason)) => {
            tracing::warn!(%method, %path, peer = ?req.peer_addr(), reason, "refused: {}", protocol::AUTH_INVALID_MESSAGE);
            rayvault::metrics::worker().auth_refusal(reason);
            return Err(ApiError::auth_invalid().into());
        }
        Err(AuthError::Skew { server_time }) => {
            tracing::warn!(%method, %path, server_time, "refused: {}", protocol::SKEW_MESSAGE);
            rayvault::metrics::worker().auth_refusal(protocol::SKEW_MESSAGE);
            // Dated ahead: it would become valid later, so its nonce is
            // recorded (durably) like an accepted one.
            if let Some((nonce, expires)) = state.verifier.future_nonce(&auth, now) {
                if state.env.store.record_nonce_async(&nonce, expires, now).await.is_err() {
                    tracing::error!("could not record the nonce of a request dated ahead of the window");
                }
            }
            let mut e = ApiError::new(
                ApiCode::AuthSkew,
                format!("{} (server time {server_time}); sync the system clocks (NTP)", protocol::SKEW_MESSAGE),
            );
            e.server_time = Some(server_time);
            return Err(e.into());
        }
    }
    req.extensions_mut().insert(Authenticated);
    next.call(req).await
}

/// How long the nonce of a signed request other than `POST /jobs` may wait
/// for another write to share its commit, while its handler runs.
const NONCE_PATIENCE: std::time::Duration = std::time::Duration::from_millis(5);

/// The nonce of an authenticated `POST /jobs`, for its handler to record
/// in the submission's own write ([`NonceSlot::take`]); one the handler
/// left (or put back after a failed write) is recorded by the guard before
/// the answer goes out.
#[derive(Debug, Clone)]
pub struct NonceSlot(std::sync::Arc<std::sync::Mutex<Option<RequestNonce>>>);

impl NonceSlot {
    fn new(n: RequestNonce) -> NonceSlot {
        NonceSlot(std::sync::Arc::new(std::sync::Mutex::new(Some(n))))
    }

    /// Takes the nonce: the caller now records it.
    pub fn take(&self) -> Option<RequestNonce> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Records the nonce now, unless it was taken; refuses the request
    /// when it was seen before or cannot be recorded (see
    /// [`nonce_outcome`]).
    pub async fn record_now(&self, store: &rayvault::store::Store) -> Result<(), ApiError> {
        match self.take() {
            Some(n) => nonce_outcome(store.record_nonce_async(&n.nonce, n.expires, n.now).await),
            None => Ok(()),
        }
    }

    /// Gives a taken nonce back (its write failed): the guard records it.
    pub fn put_back(&self, n: RequestNonce) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(n);
    }
}

/// Marker of a request whose nonce the guard records after its handler
/// (not through a [`NonceSlot`]): its handler answers through actix-web.
#[derive(Debug, Clone, Copy)]
pub struct NonceAfterHandler;

/// Marker put into a request's extensions once it is authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated;

/// The outcome of recording an accepted nonce in the store, which keeps a
/// restart (even kill -9) from reopening the replay window. A nonce already
/// there, or a failure to record it, refuses the request: fail closed.
fn nonce_outcome(recorded: Result<bool, rayvault::store::StoreError>) -> Result<(), ApiError> {
    match recorded {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::warn!(reason = "nonce replayed (seen before a restart)", "refused: {}", protocol::AUTH_INVALID_MESSAGE);
            rayvault::metrics::worker().auth_refusal("nonce replayed");
            Err(ApiError::auth_invalid())
        }
        Err(e) => Err(ApiError::from(e)),
    }
}

/// `GET /jobs/{id}/artifacts/{name}`.
fn is_download(method: &str, path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    method == "GET" && parts.len() == 5 && parts[1] == "jobs" && parts[3] == "artifacts"
}

fn check_header_size(req: &ServiceRequest, max: usize) -> Result<(), ApiError> {
    let total: usize = req.uri().to_string().len()
        + req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>();
    if total > max {
        return Err(ApiError::new(
            ApiCode::HeadersTooLarge,
            format!("request line and headers take {total} bytes; the limit is {max} (worker.max_header_bytes)"),
        ));
    }
    Ok(())
}

fn has_credential_param(query: &str) -> bool {
    query.split(['&', ';']).any(|pair| {
        // Decoded, since `%74oken=` is `token=` to any framework that reads it.
        let key = percent_decode(pair.split('=').next().unwrap_or(""));
        CREDENTIAL_PARAMS.iter().any(|c| key.eq_ignore_ascii_case(c.as_bytes()))
    })
}

/// `%XX` escapes decoded (malformed ones kept as they are).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// `Some(digest)` for `PUT /blobs/<64 lower-case hex>`.
fn blob_upload_digest(method: &str, path: &str) -> Option<String> {
    let d = path.strip_prefix("/blobs/")?;
    (method == "PUT" && protocol::is_sha256_hex(d)).then(|| d.to_string())
}

/// Reads the whole body, refusing more than `max` bytes whether or not a
/// Content-Length announced them (chunked bodies are counted as they come).
async fn read_limited(req: &mut ServiceRequest, max: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::new(ApiCode::PayloadTooLarge, format!("the body exceeds {max} bytes (worker.max_body_bytes); stage large inputs with PUT /blobs/{{sha256}}"));
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        let len = len.to_str().ok().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))?;
        if len > max as u64 {
            return Err(too_large());
        }
    }
    let mut payload = req.take_payload();
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body failed: {e}")))?;
        if buf.len() + chunk.len() > max {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_params_detected() {
        assert!(has_credential_param("token=abc"));
        assert!(has_credential_param("wait_s=1&TOKEN=abc"));
        assert!(!has_credential_param("offset=10"));
        assert!(!has_credential_param(""));
        // Encoded names are the same names.
        assert!(has_credential_param("%74oken=abc"));
        assert!(has_credential_param("wait_s=1&ACCESS%5fTOKEN=abc"));
        assert!(has_credential_param("x=1;secret=abc"));
        assert!(!has_credential_param("offset=%"));
        assert!(!has_credential_param("tok%en=1"));
    }

    #[test]
    fn blob_digest_only_for_put_blobs() {
        let d = "ab".repeat(32);
        assert_eq!(blob_upload_digest("PUT", &format!("/blobs/{d}")), Some(d.clone()));
        assert_eq!(blob_upload_digest("GET", &format!("/blobs/{d}")), None);
        assert_eq!(blob_upload_digest("PUT", "/blobs/xyz"), None);
        assert_eq!(blob_upload_digest("PUT", &format!("/blobs/{d}/x")), None);
    }
}

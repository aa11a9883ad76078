//! A submission answered in two lines (`POST /jobs?wait_ms=N&stream=1`,
//! for a worker whose `/caps` says `submit_stream`): the acceptance at once,
//! the job's view once it ends, read line by line from one answer.

use super::{decode, error, submit_body, ClientError, WorkerClient, MAX_JSON};
use crate::protocol::{self, JobView, SubmitJob, Submitted};
use awc::http::header::CONTENT_TYPE;
use awc::http::Method;
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;

/// The second line of a streamed submission ([`WorkerClient::submit_streamed`]).
pub type HeldEnd = std::pin::Pin<Box<dyn std::future::Future<Output = Result<JobView, ClientError>>>>;

/// Reads an answer line by line (`application/x-ndjson`).
struct Lines<S> {
    res: S,
    buf: bytes::BytesMut,
    /// The worker's base URL, for errors.
    url: String,
}

impl<S> Lines<S>
where
    S: futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    /// The next line, without its newline; a body that ends (or breaks off)
    /// before one is a broken connection.
    async fn next_line(&mut self) -> Result<Bytes, ClientError> {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(at + 1).freeze();
                return Ok(line.slice(..at));
            }
            if self.buf.len() > MAX_JSON {
                return Err(ClientError::Protocol(format!("an answer line longer than {MAX_JSON} bytes")));
            }
            match self.res.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    let (kind, message) = error::payload_failure(&e);
                    return Err(ClientError::Unreachable { url: self.url.clone(), kind, message });
                }
                None => {
                    let message = "the answer ended before its last line".to_string();
                    return Err(ClientError::Unreachable { url: self.url.clone(), kind: error::CallErrorKind::Reset, message });
                }
            }
        }
    }

    /// Reads the answer to its end (a little past the last line at most).
    async fn finish(&mut self) {
        let mut extra = 0usize;
        while let Some(Ok(chunk)) = self.res.next().await {
            extra += chunk.len();
            if extra > 64 * 1024 {
                break;
            }
        }
    }
}

impl WorkerClient {
    /// `POST /jobs?wait_ms=N&stream=1` (the worker's `/caps` says
    /// `submit_stream`): answers the acceptance as soon as the worker sends
    /// it, and a future of the answer's second line, the job's view once it
    /// ends or `wait` passes. A short job then needs no long-poll; a cut
    /// during the wait loses nothing, since the job's id came first.
    pub async fn submit_streamed(&self, job: &SubmitJob, inline: &[(&str, &[u8])], wait: Duration) -> Result<(Submitted, HeldEnd), ClientError> {
        let body = Bytes::from(submit_body(job, inline)?);
        let sha = protocol::sha256_hex(&body);
        let path = format!("/jobs?wait_ms={}&stream=1", wait.as_millis());
        // The whole answer, both lines, may take the wait on top of the
        // usual allowance.
        let req = self.request(Method::POST, &path, &sha, wait)?.insert_header((CONTENT_TYPE, "application/json"));
        let mut res = req.send_body(body).await.map_err(|e| self.send_failed(e))?;
        let status = res.status();
        if !status.is_success() {
            let bytes = res.body().limit(MAX_JSON).await.map_err(|e| self.body_failed(e))?;
            return Err(decode::<serde_json::Value>(status, &bytes).err().unwrap_or_else(|| ClientError::Protocol(format!("{status} without an error body"))));
        }
        let mut lines = Lines { res, buf: bytes::BytesMut::new(), url: self.base.clone() };
        let first = tokio::time::timeout(self.timeout, lines.next_line())
            .await
            .map_err(|_| self.unreachable(error::CallErrorKind::TimedOut, "timed out".into()))??;
        let submitted: Submitted = decode(status, &first)?;
        let end = Box::pin(async move {
            let line = lines.next_line().await?;
            // The body's end follows at once: read it, so that the
            // connection goes back to the pool rather than being closed.
            lines.finish().await;
            decode(status, &line)
        });
        Ok((submitted, end))
    }
}

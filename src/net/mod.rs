//! Talking to inference servers, shared by the generation fleet (src/remote/fleet.rs), the
//! HTTP judge (src/judge/http.rs) and, for the bodies, this project's own server (src/serve/):
//! - `wire`: the JSON bodies of SGLang's and vLLM's routes, as this project sends and answers
//!   them;
//! - `client`: one HTTP client (bearer token, timeout, reply-size cap, which failures are
//!   worth a retry and which are not, backoff, excerpts of error replies), so a protocol fix is
//!   made once;
//! - `spread`: one work queue over several servers, dropping the ones that fail.
pub mod client;
pub mod spread;
pub mod wire;

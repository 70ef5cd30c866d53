//! AgentService: authors publish signed agents; Workers fetch them by
//! digest. Nothing is stored unless it verifies against the control plane's
//! trust policy.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use taskrun_core::{AgentDigest, AgentRef, Json, TaskSpec};
use taskrun_proto::{InvalidMessage, pb};
use taskrun_signing::Expect;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, instrument, warn};

use crate::state::ControlPlane;
use crate::status::{parse_field, store_status};

/// How every WebAssembly component begins: the magic `\0asm`, then the
/// component encoding's version and layer (a core module has 1, 0, 0, 0).
const COMPONENT_HEADER: &[u8] = b"\0asm\x0d\x00\x01\x00";

/// Component bytes per FetchAgent message.
pub const FETCH_CHUNK_BYTES: usize = 256 * 1024;

/// The AgentService handlers.
#[derive(Debug, Clone)]
pub struct AgentApi(pub Arc<ControlPlane>);

/// The status for a refused signed agent.
pub fn signing_status(error: &taskrun_signing::Error) -> Status {
    use taskrun_signing::Error as E;
    match error.root() {
        E::Malformed { .. } | E::TooLarge { .. } | E::SizeMismatch { .. } | E::DigestMismatch { .. } => {
            Status::invalid_argument(format!("agent refused: {error}"))
        }
        _ => Status::permission_denied(format!("agent refused: {error}")),
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentApi {
    #[instrument(skip_all)]
    async fn publish_agent(
        &self,
        request: Request<Streaming<pb::PublishAgentRequest>>,
    ) -> Result<Response<pb::PublishAgentResponse>, Status> {
        let cp = &self.0;
        let Some(verifier) = cp.verifier.clone() else {
            return Err(Status::failed_precondition(
                "this control plane has no trust policy, so it accepts no agents (set trust_policy in its config)",
            ));
        };
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::PublishAgentRequest { part: Some(pb::publish_agent_request::Part::Header(h)) }) => h,
            _ => return Err(Status::invalid_argument("the first PublishAgent message must be the header")),
        };
        let max = cp.config.limits.max_agent_bytes;
        let size = u64::try_from(header.size_bytes)
            .map_err(|_| Status::invalid_argument(format!("header.size_bytes out of range: {}", header.size_bytes)))?;
        if size == 0 {
            return Err(InvalidMessage::Missing("header.size_bytes".into()).into());
        }
        if size > max {
            return Err(Status::resource_exhausted(format!(
                "agent component is {size} bytes, more than the {max}-byte cap"
            )));
        }
        let name = parse_field("header.name", &header.name)?;
        let version = parse_field("header.version", &header.version)?;
        let digest: AgentDigest = parse_field("header.digest", &header.digest)?;
        // Never allocate more than the cap, whatever the header claims.
        let mut component = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(64 << 20));
        while let Some(msg) = stream.message().await? {
            match msg.part {
                Some(pb::publish_agent_request::Part::Chunk(chunk)) => {
                    if (component.len() + chunk.len()) as u64 > size {
                        return Err(Status::invalid_argument(format!(
                            "more component bytes than the {size} the header announced"
                        )));
                    }
                    component.extend_from_slice(&chunk);
                }
                _ => return Err(Status::invalid_argument("after the header, PublishAgent takes only chunks")),
            }
        }
        if component.len() as u64 != size {
            return Err(Status::invalid_argument(format!(
                "stream ended after {} of the {size} bytes the header announced",
                component.len()
            )));
        }
        if !component.starts_with(COMPONENT_HEADER) {
            return Err(Status::invalid_argument(format!(
                "this is not a WebAssembly component (its first bytes are {:02x?}, a component starts with \
                 {COMPONENT_HEADER:02x?}): build the agent for wasm32-wasip2 (a core module, or any other file, \
                 cannot run)",
                &component[..component.len().min(COMPONENT_HEADER.len())]
            )));
        }
        let expect = Expect::name(name).and_version(version).and_digest(digest);
        let verified = verifier.verify(&header.envelope, component, &expect).map_err(|e| {
            warn!(digest = %digest, error = %e, "publish refused");
            signing_status(&e)
        })?;
        let manifest = verified.to_agent_manifest(cp.clock.now());
        let outcome = cp
            .store
            .put_agent(manifest, verified.envelope().as_bytes().to_vec(), verified.component().to_vec())
            .await
            .map_err(store_status)?;
        let existing = !outcome.is_created();
        let stored = outcome.into_inner();
        info!(agent = %stored.manifest.name, version = %stored.manifest.version, digest = %stored.manifest.digest, existing, "agent published");
        Ok(Response::new(pb::PublishAgentResponse { manifest: Some(stored.manifest.into()), existing }))
    }

    #[instrument(skip_all)]
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let req = request.into_inner();
        let name = match req.name.as_deref() {
            None | Some("") => None,
            Some(n) => Some(parse_field::<taskrun_core::AgentName>("name", n)?),
        };
        if req.page_size < 0 {
            return Err(Status::invalid_argument(format!("page_size out of range: {}", req.page_size)));
        }
        let page_size = match req.page_size {
            0 => 100,
            n => n.unsigned_abs().min(1000) as usize,
        };
        let all = self.0.store.list_agents().await.map_err(store_status)?;
        let key = |m: &taskrun_core::AgentManifest| format!("{}@{}", m.name, m.version);
        let mut matching: Vec<_> = all.into_iter().filter(|m| name.as_ref().is_none_or(|n| &m.name == n)).collect();
        matching.sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
        let start = if req.page_token.is_empty() {
            0
        } else {
            let position = matching.iter().position(|m| key(m) == req.page_token);
            position
                .map(|p| p + 1)
                .ok_or_else(|| Status::invalid_argument("page_token: not a token this server issued"))?
        };
        let page: Vec<_> = matching.iter().skip(start).take(page_size).cloned().collect();
        let next_page_token = match page.last() {
            Some(last) if start + page.len() < matching.len() => key(last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[instrument(skip_all)]
    async fn get_agent(&self, request: Request<pb::GetAgentRequest>) -> Result<Response<pb::GetAgentResponse>, Status> {
        let agent = request.into_inner().agent.ok_or(InvalidMessage::Missing("agent".into()))?;
        let agent = AgentRef::try_from(agent).map_err(|e| Status::from(e.under("agent")))?;
        let spec = TaskSpec::new(agent, Json::null());
        let stored = self.0.resolve_agent(&spec).await?;
        Ok(Response::new(pb::GetAgentResponse { manifest: Some(stored.manifest.into()), envelope: stored.envelope }))
    }

    type FetchAgentStream = Pin<Box<dyn Stream<Item = Result<pb::FetchAgentResponse, Status>> + Send>>;

    #[instrument(skip_all)]
    async fn fetch_agent(
        &self,
        request: Request<pb::FetchAgentRequest>,
    ) -> Result<Response<Self::FetchAgentStream>, Status> {
        let req = request.into_inner();
        let digest: AgentDigest = parse_field("digest", &req.digest)?;
        let stored = self.0.store.get_agent_by_digest(&digest).await.map_err(store_status)?;
        let blob = self.0.store.get_blob(&digest).await.map_err(store_status)?;
        let offset = usize::try_from(req.offset).ok().filter(|o| *o <= blob.len()).ok_or_else(|| {
            Status::out_of_range(format!("offset {} is outside the {}-byte component", req.offset, blob.len()))
        })?;
        let header = pb::FetchAgentResponse {
            part: Some(pb::fetch_agent_response::Part::Header(pb::FetchAgentHeader {
                manifest: Some(stored.manifest.into()),
                envelope: stored.envelope,
            })),
        };
        // Each chunk is copied out of the component as the stream is polled,
        // so a fetch holds the component once, not twice.
        let chunks = (offset..blob.len()).step_by(FETCH_CHUNK_BYTES).map(move |start| {
            let end = blob.len().min(start + FETCH_CHUNK_BYTES);
            Ok(pb::FetchAgentResponse { part: Some(pb::fetch_agent_response::Part::Chunk(blob[start..end].to_vec())) })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(std::iter::once(Ok(header)).chain(chunks)))))
    }
}

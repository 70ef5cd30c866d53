//! The connection to the control plane. [`Connection::open`] is the one
//! place a channel is made: when the control plane serves TLS, the CA to
//! pin and the client certificate join [`ConnectOptions`] and are applied
//! there.

use std::time::Duration;

use taskrun_proto::pb;
use taskrun_proto::pb::agent_service_client::AgentServiceClient;
use taskrun_proto::pb::task_service_client::TaskServiceClient;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::error::{RemoteError, remote, usage};

/// Largest message accepted from the control plane (Task results and
/// output chunks travel in single messages).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Largest request the control plane accepts (its gRPC decoding limit for
/// TaskService and AgentService). A larger one would be refused with
/// transport words, so the CLI refuses it first.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// How to reach the control plane.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `http://host:port`; a bare `host:port` means plaintext HTTP/2.
    pub server: String,
}

/// A channel to the control plane, and its URL for messages. The channel
/// connects on first use, so commands that fail locally send nothing.
#[derive(Debug, Clone)]
pub struct Connection {
    url: String,
    channel: Channel,
}

impl Connection {
    pub fn open(options: &ConnectOptions) -> anyhow::Result<Connection> {
        let server = options.server.trim();
        let url = if server.contains("://") { server.to_owned() } else { format!("http://{server}") };
        if url.starts_with("https://") {
            return Err(usage(format!(
                "--server {url}: TLS to the control plane is not available yet; the control plane serves \
                 plaintext on a loopback address for now, so use http://"
            )));
        }
        if !url.starts_with("http://") {
            return Err(usage(format!("--server {server:?}: expected a URL like {}", crate::cli::DEFAULT_SERVER)));
        }
        check_authority(&url["http://".len()..]).map_err(|why| {
            usage(format!("--server {server} is not a valid URL: {why} (e.g. {})", crate::cli::DEFAULT_SERVER))
        })?;
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| {
                usage(format!("--server {server} is not a valid URL: {e} (e.g. {})", crate::cli::DEFAULT_SERVER))
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            // Notice a control plane that went away while a watch waits.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        Ok(Connection { url, channel: endpoint.connect_lazy() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn tasks(&self) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn agents(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The one-line error for a status this control plane answered.
    pub fn error(&self, status: Status) -> anyhow::Error {
        anyhow::Error::new(self.remote(&status))
    }

    pub fn remote(&self, status: &Status) -> RemoteError {
        remote(&self.url, status)
    }

    /// GetTask (every Run, or only `run`), with errors as one-line messages.
    pub async fn get_task(
        &self,
        task_id: &taskrun_core::TaskId,
        run: Option<&taskrun_core::RunId>,
    ) -> anyhow::Result<pb::GetTaskResponse> {
        let request = pb::GetTaskRequest { task_id: task_id.to_string(), run_id: run.map(ToString::to_string) };
        Ok(self.tasks().get_task(request).await.map_err(|s| self.error(s))?.into_inner())
    }
}

/// Checks the `host:port` part of a URL (`rest` is what follows `http://`),
/// which the transport would only find wrong when it tries to connect, as
/// if the control plane were down.
fn check_authority(rest: &str) -> Result<(), String> {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err("it has no host".to_owned());
    }
    if authority.contains('@') {
        return Err("user names and passwords are not supported".to_owned());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        // [IPv6]:port
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(format!("{authority:?} opens an IPv6 address with [ but does not close it"));
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("unexpected {after:?} after the IPv6 address")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("it has no host".to_owned());
    }
    if let Some(port) = port
        && (!port.bytes().all(|b| b.is_ascii_digit()) || !matches!(port.parse::<u16>(), Ok(1..)))
    {
        return Err(format!("the port {port:?} is not a number from 1 to 65535"));
    }
    Ok(())
}

//! A client for the admin API on its unix socket.

use std::path::Path;

use proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;
use workload_api::client::{unix_channel, ClientError};

/// Connects to the admin API at `path`; a failure names its cause.
pub async fn connect(path: &Path) -> Result<AdminClient<Channel>, ClientError> {
    Ok(AdminClient::new(unix_channel(path).await?))
}

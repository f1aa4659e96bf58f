//! Where instances come from. The executor and destroy speak only this trait, so the cloud
//! never leaks into them; [`aws`] implements it with the AWS SDK.

pub mod aws;

use std::collections::BTreeMap;
use std::future::Future;

/// Tag keys every instance carries; destroy finds leaked instances by the first.
pub const TAG_WORKSPACE: &str = "rallyctl:workspace";
pub const TAG_LINEAGE: &str = "rallyctl:lineage";
pub const TAG_TEST: &str = "rallyctl:test";
pub const TAG_RUN: &str = "rallyctl:run";
pub const TAG_ATTEMPT: &str = "rallyctl:attempt";

#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub region: String,
    pub ami: String,
    pub instance_type: String,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub user_data: String,
    pub tags: BTreeMap<String, String>,
    /// Makes a retried RunInstances idempotent on EC2 (at most 64 ASCII characters).
    pub client_token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
}

impl InstanceState {
    /// Still costs money (or will again): anything not on its way out.
    pub fn is_alive(self) -> bool {
        !matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub id: String,
    pub region: String,
    pub state: InstanceState,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{operation} in {region}: {message}")]
pub struct ProviderError {
    pub operation: &'static str,
    pub region: String,
    pub message: String,
}

pub trait Provider: Send + Sync + 'static {
    fn launch(
        &self,
        request: &LaunchRequest,
    ) -> impl Future<Output = Result<InstanceInfo, ProviderError>> + Send;
    /// One call for many instances: the executor batches every instance it waits on.
    fn describe(
        &self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<InstanceInfo>, ProviderError>> + Send;
    fn terminate(
        &self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Instances not yet terminated that carry all of these tags.
    fn find_by_tags(
        &self,
        region: &str,
        tags: &[(&str, &str)],
    ) -> impl Future<Output = Result<Vec<InstanceInfo>, ProviderError>> + Send;
    /// Pushes an SSH public key that the instance accepts for `os_user` during 60 seconds.
    fn push_key(
        &self,
        region: &str,
        instance_id: &str,
        os_user: &str,
        public_key: &str,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
}

//! How an agent that lost its standing is refused: PERMISSION_DENIED with
//! a message for people and the standing in metadata for the agent, which
//! attests again only when it was evicted, never when it was banned.

use tonic::Status;

/// PERMISSION_DENIED for an agent that lost its standing, saying why to
/// people (the message) and to the agent (the standing metadata).
fn refused(standing: &'static str, message: String) -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        proto::AGENT_STANDING_KEY,
        tonic::metadata::MetadataValue::from_static(standing),
    );
    Status::with_metadata(tonic::Code::PermissionDenied, message, metadata)
}

pub(super) fn banned(agent_id: &str) -> Status {
    refused("banned", format!("agent {agent_id} is banned"))
}

pub(super) fn evicted(agent_id: &str) -> Status {
    refused(
        "evicted",
        format!("agent {agent_id} is not attested (it may have been evicted); attest again"),
    )
}

//! `sigil-agent delegate ...`: an owner-bound workload registers, lists and
//! deletes its children through the agent's Delegation service. The caller
//! is attested like any Workload API caller, so run these as the workload.

use clap::Subcommand;
use proto::agent as pb;
use proto::agent::delegation_client::DelegationClient;
use proto::issuer::{Entry, Selector};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use workload_api::client::{self, SecurityHeader};

use super::api::{status, ClientArgs};

#[derive(Debug, Subcommand)]
pub enum DelegateCommand {
    /// Register a child workload under this workload's SPIFFE ID.
    Register {
        /// The child's SPIFFE ID, under this workload's.
        #[arg(long)]
        spiffe_id: String,
        /// Which of this workload's SPIFFE IDs is the parent (default: its first).
        #[arg(long)]
        parent_spiffe_id: Option<String>,
        /// TYPE:VALUE; repeat for several. Default: the parent's; must include them.
        #[arg(long = "selector")]
        selectors: Vec<String>,
        /// X509-SVID lifetime in seconds; default (0): the parent's.
        #[arg(long, default_value_t = 0)]
        x509_svid_ttl: i64,
        /// JWT-SVID lifetime in seconds; default (0): the parent's.
        #[arg(long, default_value_t = 0)]
        jwt_svid_ttl: i64,
        #[command(flatten)]
        socket: ClientArgs,
    },
    /// List the children this workload registered.
    List(ClientArgs),
    /// Delete a child (and what it registered in turn).
    Delete {
        /// The child's entry id, as `delegate list` shows it.
        #[arg(long)]
        entry_id: String,
        #[command(flatten)]
        socket: ClientArgs,
    },
}

async fn connect(
    args: &ClientArgs,
) -> Result<DelegationClient<InterceptedService<Channel, SecurityHeader>>, String> {
    let channel = client::channel(&args.address()?)
        .await
        .map_err(|e| e.to_string())?;
    Ok(DelegationClient::with_interceptor(channel, SecurityHeader))
}

fn selector(value: &str) -> Result<Selector, String> {
    let (kind, rest) = value
        .split_once(':')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| format!("--selector {value:?}: expected TYPE:VALUE"))?;
    Ok(Selector {
        r#type: kind.into(),
        value: rest.into(),
    })
}

pub async fn execute(command: DelegateCommand) -> Result<(), String> {
    match command {
        DelegateCommand::Register {
            spiffe_id,
            parent_spiffe_id,
            selectors,
            x509_svid_ttl,
            jwt_svid_ttl,
            socket,
        } => {
            let selectors = selectors
                .iter()
                .map(|s| selector(s))
                .collect::<Result<_, _>>()?;
            let entry = connect(&socket)
                .await?
                .register_child(pb::RegisterChildRequest {
                    spiffe_id,
                    parent_spiffe_id: parent_spiffe_id.unwrap_or_default(),
                    selectors,
                    x509_svid_ttl,
                    jwt_svid_ttl,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_children(std::slice::from_ref(&entry), socket.json);
        }
        DelegateCommand::List(socket) => {
            let list = connect(&socket)
                .await?
                .list_children(pb::ListChildrenRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print_children(&list.children, socket.json);
        }
        DelegateCommand::Delete { entry_id, socket } => {
            let deleted = connect(&socket)
                .await?
                .delete_child(pb::DeleteChildRequest { entry_id })
                .await
                .map_err(status)?
                .into_inner();
            if socket.json {
                workload_api::outln!(
                    "{}",
                    serde_json::json!({ "deleted_ids": deleted.deleted_ids })
                );
            } else {
                for id in deleted.deleted_ids {
                    workload_api::outln!("Deleted entry {id}");
                }
            }
        }
    }
    Ok(())
}

fn child_json(e: &Entry) -> serde_json::Value {
    let owner = e.owner.as_ref();
    serde_json::json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "selectors": e.selectors.iter().map(|s| format!("{}:{}", s.r#type, s.value)).collect::<Vec<_>>(),
        "x509_svid_ttl": e.x509_svid_ttl,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "expires_at": e.expires_at,
        "owner": owner.map(|o| o.id.clone()),
        "actors": owner.map(|o| o.actors.clone()).unwrap_or_default(),
    })
}

fn print_children(children: &[Entry], json: bool) {
    if json {
        let all: Vec<_> = children.iter().map(child_json).collect();
        workload_api::outln!("{}", serde_json::Value::Array(all));
        return;
    }
    if children.is_empty() {
        workload_api::outln!("Found 0 children");
    }
    for e in children {
        let owner = e.owner.as_ref();
        workload_api::outln!("Entry ID  : {}", e.id);
        workload_api::outln!("SPIFFE ID : {}", e.spiffe_id);
        if let Some(owner) = owner {
            workload_api::outln!("Owner     : {}", owner.id);
            workload_api::outln!("Actors    : {}", owner.actors.join(" -> "));
        }
    }
}

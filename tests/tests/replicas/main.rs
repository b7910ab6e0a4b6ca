//! Sigil scaled out: the store on a real PostgreSQL server, several issuer
//! replicas sharing it, agents failing over between them, and the load
//! tool that measures them. One test binary, so that the issuer and the
//! agent are linked into it once rather than once per file.

mod agent_failover;
mod loadgen;
mod postgres;
mod replica_failover;
mod revocation_list;
mod shared_bundle;

//! Kafka adapters: client settings, topic administration, the room partitioner, and the
//! repartition record format. Nothing here knows about tasks or the engine's rules.

pub mod admin;
pub mod envelope;
pub mod group;
pub mod partitioner;

use rdkafka::config::ClientConfig;

use crate::config::Config;

/// Settings every client of allread shares: bootstrap servers, then the user's `kafka.*`
/// passthrough properties, which win over allread's own choices.
pub fn base_client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    c.set("client.id", format!("{}-{}", cfg.application_id, std::process::id()));
    c
}

/// Applies the user's passthrough properties last.
pub fn with_passthrough(mut c: ClientConfig, cfg: &Config) -> ClientConfig {
    for (k, v) in &cfg.kafka {
        c.set(k, v);
    }
    c
}

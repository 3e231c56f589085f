//! The Prometheus exporter: the global recorder, its HTTP listener and the
//! HELP text of every series (the series themselves are registered by
//! `state::counters`).

use std::net::SocketAddr;

/// The metrics listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Building or binding the exporter failed.
    #[error("starting the Prometheus listener on {addr}: {message}")]
    Listen {
        /// The configured `metrics_listen`.
        addr: SocketAddr,
        /// The exporter's error.
        message: String,
    },
}

/// Installs the global recorder and the HTTP listener (inside the runtime).
pub fn install(addr: SocketAddr) -> Result<(), MetricsError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| MetricsError::Listen {
            addr,
            message: e.to_string(),
        })?;
    describe();
    Ok(())
}

/// HELP text of every metric: what the operator reads in /metrics, and
/// what `promtool check metrics` requires.
fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(
        "vassal_flows_restored_total",
        "Flows of the previous router process read back from the state file at start, by outcome: loaded, invalid, expired, over_bound."
    );
    describe_counter!(
        "vassal_tx_bytes_total",
        Unit::Bytes,
        "IP bytes leaving the project's vassal, as it sent them."
    );
    describe_counter!(
        "vassal_rx_bytes_total",
        Unit::Bytes,
        "IP bytes delivered to the project's vassal."
    );
    describe_counter!(
        "vassal_tx_packets_total",
        "IP packets leaving the project's vassal."
    );
    describe_counter!(
        "vassal_rx_packets_total",
        "IP packets delivered to the project's vassal."
    );
    describe_counter!(
        "vassal_dropped_packets_total",
        "Packets of the project dropped, by reason: firewall, spoofed, malformed, queue_full, no_route, flow_table_full, ttl_exceeded, link_local, fragment (a later fragment of a datagram whose first fragment did not pass or expired, a fragment out of order or overlapping, or a first fragment the fragment table had no room for)."
    );
    describe_counter!(
        "vassal_host_dropped_packets_total",
        "Packets from the host tun dropped before a project was known, by reason."
    );
    describe_counter!(
        "vassal_attach_refusals_total",
        "Attach requests refused, by reason."
    );
    describe_gauge!(
        "vassal_compat_connections",
        "Open uWSGI compat connections (bounded by limits.max_compat_connections)."
    );
    describe_counter!(
        "vassal_compat_rule_blocks_total",
        "uWSGI rule blocks (modifier2 = 1) a compat peer sent; refused."
    );
    describe_counter!(
        "vassal_rules_reloads_total",
        "Rule files reloaded and in force."
    );
    describe_counter!(
        "vassal_rules_reload_failures_total",
        "Rule reloads refused because the file was invalid; the old rules stayed."
    );
    describe_gauge!(
        "vassal_attached",
        "Number of the project's vassals attached now."
    );
    describe_gauge!(
        "vassal_flows",
        "Flows of the project in the stateful flow table."
    );
    describe_gauge!("vassal_flow_table_size", "Flows in the whole flow table.");
    describe_gauge!(
        "vassal_fragment_table_size",
        "Fragmented datagrams in flight (first fragment passed, last not yet seen) in the whole fragment table."
    );
    describe_counter!(
        "vassal_offloaded_packets_total",
        "TCP super-packets (TSO/GSO) moved whole between tun devices; the packet and byte counters count each as the segments it stands for."
    );
    describe_counter!(
        "vassal_segmented_packets_total",
        "TCP super-packets the router cut into segments itself, for a destination without offloads (a uWSGI compat peer)."
    );
    describe_counter!(
        "vassal_cpu_seconds_total",
        Unit::Seconds,
        "CPU time of the project's vassals, in whole seconds, as their launchers report it (usage request, every 2 s); resets when the router restarts."
    );
    describe_gauge!(
        "vassal_memory_bytes",
        Unit::Bytes,
        "Memory the project's attached vassals hold now (their cgroups' usage, page cache included)."
    );
    describe_gauge!(
        "vassal_memory_peak_bytes",
        Unit::Bytes,
        "Sum of the attached vassals' own memory peaks since each started."
    );
    describe_counter!(
        "vassal_io_read_bytes_total",
        Unit::Bytes,
        "Bytes the project's vassals read from block devices."
    );
    describe_counter!(
        "vassal_io_write_bytes_total",
        Unit::Bytes,
        "Bytes the project's vassals wrote to block devices."
    );
    describe_gauge!(
        "vassal_pids",
        "Processes and threads in the project's attached vassals now."
    );
    describe_gauge!(
        "vassal_limit_memory_bytes",
        Unit::Bytes,
        "Memory limit of the project's attached vassals (their sum); 0 when one has none."
    );
    describe_gauge!(
        "vassal_limit_cpu_cores",
        "CPU limit of the project's attached vassals in cores (their sum); 0 when one has none."
    );
    describe_gauge!(
        "vassal_limit_pids",
        "Pids limit of the project's attached vassals (their sum); 0 when one has none."
    );
    describe_counter!(
        "vassal_rate_limited_seconds_total",
        Unit::Seconds,
        "Time the router held off reading the project's vassal's tun because its net_out was spent (egress shaped), whole seconds."
    );
    describe_gauge!(
        "vassal_limit_net_out_bytes_per_second",
        "Network limit on what the project's latest attached vassal sends, bytes per second (its rate in bit/s over 8); 0 when unlimited."
    );
    describe_gauge!(
        "vassal_limit_net_in_bytes_per_second",
        "Network limit on what the project's latest attached vassal receives, bytes per second; 0 when unlimited."
    );
    describe_counter!(
        "vassal_events_total",
        "Events emitted to the event sink, by event."
    );
    describe_counter!(
        "vassal_events_lost_total",
        "Events the unix datagram sink could not take."
    );
}

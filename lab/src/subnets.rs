//! The one table of lab subnets: every test that uses lab addresses (a lab, a daemon on a node
//! address, a fake peer), the benchmark and the demo take the third octet of their addresses
//! from [`SUBNETS`], by name, through [`subnet_of`]. No two entries share a subnet (the unit
//! test below), so two tests never collide when they run at once; `tests/subnets.rs` of the
//! workspace checks that the sources take every subnet from here and have no literal of their
//! own. The subnets are the requested ones: [`lab_subnet`](crate::lab_subnet) shifts them by
//! `PRIMGR_LAB_SUBNET_SHIFT` like any other.
//!
//! A test's name is `<file>::<test function>` (`lab/<file>::...` for the lab's own tests).

/// Every subnet in use, by who uses it.
pub const SUBNETS: &[(&str, u8)] = &[
    // tests/tls.rs
    ("tls::real_primary_votes_and_cluster_over_tls", 145),
    // tests/auth.rs
    (
        "auth::unsigned_forged_and_replayed_peer_requests_get_401_and_change_nothing",
        155,
    ),
    (
        "auth::without_a_key_file_only_the_members_addresses_are_answered",
        156,
    ),
    ("auth::rotating_the_key_loses_no_vote", 157),
    // tests/cluster.rs, api.rs, defects_lab.rs, haproxy.rs
    ("cluster::normal_failover_split_brain_and_rejoin", 31),
    ("cluster::stopped_standby_and_frozen_primary", 32),
    (
        "cluster::cluster_scope_status_metrics_real_primary_and_cluster_view",
        190,
    ),
    (
        "api::simultaneous_real_primary_requests_share_one_fan_out",
        33,
    ),
    (
        "defects_lab::a_witness_and_a_promotion_outside_repmgr_are_never_primary",
        34,
    ),
    (
        "defects_lab::a_witness_in_the_primarys_site_votes_and_is_a_witness",
        35,
    ),
    (
        "defects_lab::a_vote_counts_once_however_the_addresses_are_set",
        36,
    ),
    (
        "defects_lab::a_connection_abandoned_at_the_timeout_is_closed",
        37,
    ),
    ("haproxy::writes_reach_only_the_real_primary", 41),
    // chaos, hostile clients, garbage from peers, bad databases
    (
        "chaos::random_faults_never_make_primgr_lie_hang_or_crash",
        50,
    ),
    (
        "hostile_http::hostile_clients_get_4xx_or_a_closed_connection_and_health_checks_keep_answering",
        51,
    ),
    (
        "garbage_peers::garbage_from_peers_is_no_vote_and_costs_neither_time_nor_memory",
        52,
    ),
    (
        "bad_database::bad_credentials_schema_and_node_name_keep_the_daemon_up_and_say_why_once",
        53,
    ),
    // the benchmark (bench/) and the demo (`primgr-lab up`)
    ("primgr-bench", 61),
    ("primgr-bench --short", 62),
    ("primgr-lab up", 77),
    // tests/operator.rs
    (
        "operator::cluster_command_through_failover_split_brain_and_stopped_daemons",
        71,
    ),
    ("operator::least_privilege_role_is_enough", 72),
    (
        "operator::cluster_command_with_nothing_listening_exits_2",
        73,
    ),
    // tests/leases.rs, session_lost.rs
    ("leases::the_partial_partition_race_has_no_overlap", 81),
    (
        "leases::through_haproxy_no_write_lands_on_the_old_primary_after_the_new",
        82,
    ),
    ("leases::restarting_the_primarys_daemon_loses_no_write", 83),
    ("leases::a_switchover_through_haproxy", 84),
    ("leases::repmgrd_failover_through_haproxy", 85),
    ("leases::a_healthy_primary_never_drops_a_200", 86),
    (
        "session_lost::a_database_that_stops_between_two_polls_is_down_at_once",
        87,
    ),
    (
        "session_lost::an_ended_session_withholds_the_snapshot_and_wakes_the_poller",
        88,
    ),
    // tests/systemd_unit.rs
    (
        "systemd_unit::binary_holds_max_connections_under_the_units_limit",
        92,
    ),
    (
        "systemd_unit::a_held_port_exits_69_and_the_next_start_after_it_is_freed_serves",
        93,
    ),
    (
        "systemd_unit::memory_and_tasks_limits_hold_at_the_connection_cap",
        94,
    ),
    // tests/reads.rs
    ("reads::every_read_endpoint_and_parameter", 101),
    ("reads::read_write_answers_like_state", 102),
    (
        "reads::a_patroni_style_primary_check_is_warned_once_per_client",
        103,
    ),
    ("reads::a_postmaster_that_accepts_no_one_is_down", 104),
    ("reads::haproxy_reads_follow_replay_lag_cuts_and_drain", 105),
    // tests/operations.rs
    ("operations::agent_through_haproxy", 111),
    ("operations::agent_hostile_input", 112),
    ("operations::reload_under_load", 113),
    ("operations::metrics_parse_and_agree", 114),
    (
        "operations::shipped_agent_variant_keeps_a_lagging_standby_in_the_pool",
        115,
    ),
    // tests/trust.rs (issue 17: peers that are not the cluster)
    (
        "trust::a_flood_of_unauthenticated_releases_and_votes_costs_no_write",
        160,
    ),
    (
        "trust::an_impostor_at_a_voters_address_is_never_counted",
        161,
    ),
    (
        "trust::a_daemon_of_another_cluster_at_a_voters_address_is_never_counted",
        162,
    ),
    // the other cluster of the test above (its own initdb, the same node names)
    ("trust::other_cluster", 163),
    // tests/flood.rs
    (
        "flood::one_address_holding_thousands_of_connections_costs_no_check_and_no_write",
        170,
    ),
    (
        "flood::a_pipelined_flood_leaves_the_primary_its_200_and_the_cycle_its_deadlines",
        171,
    ),
    // tests/scope.rs (issue 19: two sites cut apart, vote_scope, latency between sites)
    ("scope::site_scope_gives_two_200s_one_per_site", 180),
    (
        "scope::cluster_scope_never_two_200s_and_the_witness_side_keeps_or_gains_it",
        181,
    ),
    (
        "scope::a_healthy_primary_keeps_its_200_with_distant_voters",
        182,
    ),
    (
        "scope::check_config_refuses_a_peer_timeout_the_distance_breaks",
        183,
    ),
    // the lab's own tests (lab/tests/)
    // tests/check.rs, secrets.rs, alerts.rs
    ("check::every_exit_code_against_a_live_cluster", 121),
    ("secrets::no_planted_secret_reaches_any_output", 131),
    (
        "secrets::a_toml_error_on_the_conninfo_line_prints_no_secret",
        132,
    ),
    (
        "alerts::alert_rules_on_a_real_failover_and_split_brain",
        133,
    ),
    // tests/sync.rs, hooks.rs
    ("sync::sync_checks_follow_the_primary", 141),
    (
        "sync::haproxy_read_only_sync_pool_skips_asynchronous_standbys",
        142,
    ),
    (
        "hooks::pgbouncer_follows_the_primary_through_a_failover",
        151,
    ),
    (
        "hooks::the_fence_makes_a_split_brain_old_primary_refuse_writes",
        152,
    ),
    ("hooks::every_change_runs_the_hook_once_with_the_facts", 153),
    ("lab/lab::lab_lifecycle", 200),
    ("lab/lab::crash_rejoin_daemons_and_drop", 201),
    ("lab/witness::witness_node_and_daemons_in_phases", 240),
    (
        "lab/partition::partial_partition_then_promotion_outside_repmgr",
        241,
    ),
    (
        "lab/replay::paused_replay_keeps_receiving_and_catches_up",
        242,
    ),
    (
        "lab/repmgrd::repmgrd_promotes_a_dc1_standby_and_the_others_follow",
        243,
    ),
    (
        "lab/switchover::switchover_to_node2_with_siblings_following",
        244,
    ),
];

/// The subnet of `name` in [`SUBNETS`] (as requested: [`Lab::build`](crate::Lab::build) and
/// [`lab_subnet`](crate::lab_subnet) shift it).
///
/// # Panics
/// When `name` has no entry: a test without one must get one (a free subnet) before it runs.
pub fn subnet_of(name: &str) -> u8 {
    SUBNETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| {
            panic!("no subnet for {name:?} in primgr_lab::SUBNETS (lab/src/subnets.rs): add one")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Two tests never share a subnet: every name and every subnet appears once, and every
    /// subnet is a valid third octet (1..=254; 0 is the machine's 127.0.0.x).
    #[test]
    fn no_two_tests_share_a_subnet() {
        let mut by_subnet: BTreeMap<u8, Vec<&str>> = BTreeMap::new();
        let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
        for (name, subnet) in SUBNETS {
            by_subnet.entry(*subnet).or_default().push(name);
            *by_name.entry(name).or_default() += 1;
        }
        let shared: Vec<_> = by_subnet.iter().filter(|(_, n)| n.len() > 1).collect();
        let twice: Vec<_> = by_name.iter().filter(|(_, k)| **k > 1).collect();
        let invalid: Vec<_> = by_subnet
            .keys()
            .filter(|s| !(1..=254).contains(*s))
            .collect();
        println!(
            "{} entries, {} subnets: {} shared, {} names twice, {} invalid",
            SUBNETS.len(),
            by_subnet.len(),
            shared.len(),
            twice.len(),
            invalid.len()
        );
        assert!(shared.is_empty(), "subnets shared: {shared:?}");
        assert!(twice.is_empty(), "names twice: {twice:?}");
        assert!(invalid.is_empty(), "subnets outside 1..=254: {invalid:?}");
        assert_eq!(
            subnet_of("chaos::random_faults_never_make_primgr_lie_hang_or_crash"),
            50
        );
    }

    #[test]
    #[should_panic(expected = "no subnet for")]
    fn a_name_without_an_entry_panics() {
        subnet_of("nobody::no_such_test");
    }
}

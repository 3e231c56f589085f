//! The router's state: the registry of projects and attached vassals, the
//! flow and fragment tables, the rules in force, counters, evidence for the
//! event watch and the budgets of what the router builds itself.

pub mod budget;
pub mod counters;
pub mod evidence;
pub mod firewall;
pub mod flow_store;
pub mod flows;
pub mod fragments;
pub mod rate;
pub mod registry;
pub mod remote;
pub mod restore;

//! Tests that drive a real `eddy serve` process over the Postgres wire protocol.

mod common;

mod actions;
mod auth;
mod catalog;
mod cep;
mod clients;
mod durability;
mod grafana;
mod hardening;
mod http_api;
mod lifecycle;
mod locks;
mod migrations;
mod models;
mod orm;
mod protocol;
mod sinks;
mod slt_suite;
mod streaming;
mod tls;

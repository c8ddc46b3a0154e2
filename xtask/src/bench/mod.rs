//! Benchmarks: figures for host-vmm and a stock-QEMU peer measured in the same run, with
//! ratios, printed as a table or one JSON object.

pub mod api;
pub mod boot;
pub mod hostvmm_migrate;
pub mod migrate;
pub mod migrate_load;
pub mod migrate_tls;
pub mod net;
pub mod qemu_migrate;
pub mod stdapps;
pub mod switch;
pub mod widearea;

//! The fuzz targets' seeds run through their entry points (so a change that breaks a target
//! fails here, not only under `cargo xtask fuzz`), the seed files held to the encoders, and
//! every input a fuzzer ever crashed kept as a regression.

use super::*;
use std::path::PathBuf;

/// `fuzz/seeds/` at the repository root.
fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
}

/// `fuzz/regressions/<target>/`: inputs a fuzzer once crashed, kept after the fix.
fn regression_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions")
}

/// The host-vmm entry point of `target`, if it has one here.
fn entry(target: &str) -> Option<fn(&[u8])> {
    Some(match target {
        "machine_state" => machine_state,
        "agent_protocol" => agent_host,
        "http_request" => http_request,
        "virtio_net" => virtio_net,
        "virtio_console" => virtio_console,
        "ixgbevf" => ixgbevf,
        _ => return None,
    })
}

#[test]
fn every_seed_runs_through_its_target() {
    for target in TARGETS {
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "{target} has no seeds");
        if let Some(run) = entry(target) {
            for seed in &seeds {
                run(seed);
            }
        }
    }
}

/// Every input under `fuzz/regressions/` runs through its target without a panic. Found so
/// far: devices refusing their own saved state (a BAR the guest parked outside the MMIO
/// window, an enabled VF queue on a ring it cannot use, undefined virtio status bits the
/// guest wrote), so such a guest could not move.
#[test]
fn every_past_crash_stays_fixed() {
    let mut ran = 0;
    for target in TARGETS {
        let Ok(files) = std::fs::read_dir(regression_dir().join(target)) else {
            continue;
        };
        let run = entry(target).unwrap_or_else(|| {
            panic!("{target}'s regressions belong in its own crate's tests, not here")
        });
        for file in files {
            let path = file.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            ran += 1;
        }
    }
    assert!(ran >= 3, "the regression inputs are missing ({ran} found)");
}

#[test]
fn the_seed_state_decodes_and_restores() {
    let [state] = seeds("machine_state").try_into().expect("one state seed");
    let decoded: MachineState = migration_wire::decode_state(&state).expect("the seed decodes");
    devices::restore_sections(&decoded.devices).expect("fresh devices take fresh sections");
}

/// The files under `fuzz/seeds/` are what [`seeds`] makes; with `ROAM_WRITE_SEEDS=1` this
/// writes them instead (after an encoding changed on purpose).
#[test]
fn the_seed_files_are_current() {
    let write = std::env::var_os("ROAM_WRITE_SEEDS").is_some();
    for target in TARGETS {
        let dir = seed_dir().join(target);
        if write {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
        }
        let seeds = seeds(target);
        for (i, seed) in seeds.iter().enumerate() {
            let path = dir.join(format!("seed-{i:02}"));
            if write {
                std::fs::write(&path, seed).unwrap();
            }
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == *seed,
                "{} is not what the encoders make now: rewrite the seeds with \
                 `ROAM_WRITE_SEEDS=1 cargo test -p host-vmm --lib fuzzing` and commit them",
                path.display()
            );
        }
        let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(
            files,
            seeds.len(),
            "{} holds other files than the seeds: rewrite them with ROAM_WRITE_SEEDS=1",
            dir.display()
        );
    }
}

//! The machine state that crosses during the pause: the VM's, the vCPU's and every
//! device's, in one plain-data struct (encoded with `migration_wire::encode_state`, which adds
//! the state version).

use crate::devices::DevicesState;
use crate::kvm::state::{VcpuState, VmState};
use serde::{Deserialize, Serialize};

/// Everything but guest RAM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineState {
    /// irqchip and KVM clock.
    pub vm: VmState,
    /// The one vCPU.
    pub vcpu: VcpuState,
    /// serial, PCI, virtio-net, the VF model, the control channel.
    pub devices: DevicesState,
}

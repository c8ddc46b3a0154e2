//! Roam's device drivers: PCI, MSI-X, virtio-mmio's command-line entries
//! ([`virtio_mmio`]), virtio-net over either bus and the Intel 82599 VF ([`ixgbevf`]),
//! behind the [`net::NetDevice`] trait.
//!
//! The crate is `no_std` (with `alloc`) and depends on none of Roam's other crates. It
//! programs hardware only through small abstractions the kernel implements:
//! - [`pci::ConfigAccess`]: configuration space reads and writes (port I/O 0xCF8/0xCFC);
//! - `virtio_drivers::Hal`: DMA memory and mapping device BARs;
//! - [`hal::Dma`] and [`hal::Delay`] (ixgbevf): DMA memory for its rings, and bring-up waits.
//!
//! The kernel enumerates PCI, probes the NIC and hands the resulting device to netstack,
//! which sees only [`net::NetDevice`]:
//!
//! ```text
//! let nic = pci::enumerate(&config).into_iter().find(virtio_net::matches)?;
//! let bars = pci::bar::read_assigned(&mut config, nic.bdf, Some(&mut window))?; // sized once
//! let dev = VirtioNet::<KernelHal>::probe(&mut config, nic.bdf, &bars, irq)?;
//! let stack = netstack::Stack::new(dev, net_config, now);
//! // Without PCI (QEMU microvm): the transports the command line names.
//! let mmio = virtio_mmio::devices(cmdline).find_map(Result::ok)?; // its range mapped
//! let dev = VirtioNet::<KernelHal>::probe_mmio(&mmio)?; // Interrupt::Line(mmio.irq)
//! ```
//!
//! `unsafe` lives only in [`hal`] (register access and the DMA buffers lent to devices): the
//! crate denies `unsafe_code` everywhere else.
//! Everything a device reports (BARs, capabilities, descriptor tokens, lengths) is checked
//! before use; a bad value is an error or a dropped frame, never a panic.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

#[allow(unsafe_code)]
pub mod hal;
pub mod ixgbevf;
pub mod net;
pub mod pci;
pub mod virtio_console;
pub mod virtio_mmio;
pub mod virtio_net;

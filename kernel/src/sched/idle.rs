//! The idle thread: the network's work and halting, once threads exist.
//!
//! It runs with interrupts off (but inside HLT and the one-instruction window of
//! `cpu::accept_interrupts`), so it is never preempted. Each pass: take pending interrupts,
//! poll the network (`net::service`: NIC events, the control channel, smoltcp), wake the
//! threads whose deadline passed and, if the network moved, those waiting on it; free the
//! stacks of finished threads; then hand the CPU to the next ready app thread, or halt with
//! the timer armed for the earliest deadline or network poll.

use super::{SCHED, schedule};
use crate::arch::{cpu, switch, tls};
use crate::runqueue::NEVER;
use crate::timer;

/// The idle thread's body (started by `switch::new_stack`, never returns).
pub(super) extern "C" fn run(_: usize) {
    cpu::disable_interrupts();
    loop {
        cpu::accept_interrupts();
        let now = timer::now_ns();
        let network = crate::net::service(now).unwrap_or(NEVER);
        let progress = crate::net::progress();
        SCHED.with(|s| {
            s.queue.expire(now);
            if progress != s.net_seen {
                s.net_seen = progress;
                s.queue.wake_network();
            }
        });
        while let Some(((base, size), tp)) = SCHED.with(|s| s.queue.reap()) {
            // SAFETY: the thread finished (it switched away for good before the idle thread
            // ran) and `reap` hands each one out once: nothing uses its stack or TLS block.
            unsafe {
                switch::free_stack(base, size);
                if tp != 0 {
                    tls::free_block(tp);
                }
            }
        }
        // Someone to run: go (and come back when due). Nobody: halt until an interrupt.
        let ran_a_thread = schedule(|s| s.queue.pick().is_some());
        if !ran_a_thread {
            let wake = SCHED
                .with(|s| s.queue.next_deadline())
                .min(network)
                .min(crate::net::next_poll_ns());
            // A fresh reading: a deadline that passed during the service above must be re-armed.
            timer::arm_at((wake != NEVER).then_some(wake), timer::now_ns());
            cpu::wait_for_interrupt();
        }
    }
}

/// The idle thread's exit hook, never reached: [`run`] does not return.
pub(super) extern "C" fn never_exits() -> ! {
    unreachable!("the idle thread returned");
}

//! The scheduler's bookkeeping, without the CPU: which threads exist, which may run, what
//! the blocked ones wait for (a deadline, a futex word, another thread's end, the network)
//! and whose turn is next, round robin. `sched` does the switching and the idle thread;
//! this module is pure, so `cargo test -p kernel` checks it on the host.
//!
//! Slots are a fixed array (no allocation: the scheduler also runs from interrupt handlers)
//! with two bit sets, `used` and `ready`, so finding a free slot or the next ready thread
//! is a rotate and a count of trailing zeros, not a scan. Thread ids are never reused: an
//! id that was handed out and is no longer in a slot belongs to a thread that finished.

/// Thread slots: the main thread and up to 63 others at a time.
pub const MAX_THREADS: usize = 64;
/// The main thread's id (what `sys_getpid` returned before threads existed).
pub const MAIN_TID: u32 = 1;
/// No deadline.
pub const NEVER: u64 = u64::MAX;

/// What a blocked thread waits for (besides its deadline, if any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Only the deadline (`sleep`).
    Sleep,
    /// A wake on the futex word at this address.
    Futex(usize),
    /// The end of the thread with this id.
    Join(u32),
    /// The network's next step (a blocked socket call).
    Network,
}

/// Where a thread is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The slot is empty.
    Free,
    /// Runnable, waiting for its turn.
    Ready,
    /// On the CPU.
    Running,
    /// Waiting (see [`Wait`]).
    Blocked(Wait),
    /// Finished; its stack is still to be freed (by the idle thread).
    Exited,
}

/// How a thread's last wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woken {
    /// What it waited for happened.
    Notified,
    /// Its deadline passed first.
    TimedOut,
}

/// One thread's record.
#[derive(Clone, Copy, Debug)]
pub struct Thread {
    /// Its id.
    pub tid: u32,
    /// Its state.
    pub state: State,
    /// Monotonic ns when a blocked wait times out, or [`NEVER`].
    pub deadline: u64,
    /// How its last wait ended.
    pub woken: Woken,
    /// Its saved stack pointer while not running (the context switch's).
    pub rsp: u64,
    /// Its thread pointer (FS base), 0 without thread-locals.
    pub tp: u64,
    /// Its stack's (lowest address, size); (0, 0) for the main thread's boot-time stack.
    pub stack: (u64, u64),
    /// The network's progress count its last socket call saw (its wait starts from there).
    pub net_seen: u64,
}

impl Thread {
    const FREE: Thread = Thread {
        tid: 0,
        state: State::Free,
        deadline: NEVER,
        woken: Woken::Notified,
        rsp: 0,
        tp: 0,
        stack: (0, 0),
        net_seen: 0,
    };
}

/// Whether a thread id can still be joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinState {
    /// It runs or waits in this slot.
    Alive(usize),
    /// It finished.
    Finished,
    /// No thread ever had this id.
    Unknown,
}

/// All threads and whose turn it is. Slot 0 is the main thread; the idle thread has no
/// slot (it runs when [`RunQueue::current`] is `None`).
#[derive(Debug)]
pub struct RunQueue {
    threads: [Thread; MAX_THREADS],
    current: Option<usize>,
    /// The app thread that ran last: the round robin goes on after it.
    last: usize,
    used: u64,
    ready: u64,
    exited: u64,
    next_tid: u32,
    /// No blocked thread times out before this (it may be earlier than any: [`expire`]
    /// recomputes it).
    ///
    /// [`expire`]: RunQueue::expire
    next_deadline: u64,
}

impl Default for RunQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl RunQueue {
    /// Just the main thread, running.
    pub const fn new() -> Self {
        let mut threads = [Thread::FREE; MAX_THREADS];
        threads[0].tid = MAIN_TID;
        threads[0].state = State::Running;
        RunQueue {
            threads,
            current: Some(0),
            last: 0,
            used: 1,
            ready: 0,
            exited: 0,
            next_tid: MAIN_TID + 1,
            next_deadline: NEVER,
        }
    }

    /// The running thread's slot; `None` while the idle thread runs.
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// The running thread's id (0 for the idle thread).
    pub fn current_tid(&self) -> u32 {
        self.current.map_or(0, |i| self.threads[i].tid)
    }

    /// The thread in slot `i`.
    pub fn thread(&self, i: usize) -> &Thread {
        &self.threads[i]
    }

    /// The thread in slot `i`, to change its saved registers or thread pointer.
    pub fn thread_mut(&mut self, i: usize) -> &mut Thread {
        &mut self.threads[i]
    }

    /// Adds a ready thread with this stack, initial stack pointer and thread pointer; its
    /// id, or `None` when every slot is taken.
    pub fn add(&mut self, stack: (u64, u64), rsp: u64, tp: u64) -> Option<u32> {
        let i = (!self.used).trailing_zeros() as usize;
        if i >= MAX_THREADS {
            return None;
        }
        let tid = self.next_tid;
        // Ids are never reused; after 2^32 - 2 spawns they would be, which no guest lives to see.
        self.next_tid = self.next_tid.wrapping_add(1).max(MAIN_TID + 1);
        self.threads[i] = Thread {
            tid,
            state: State::Ready,
            deadline: NEVER,
            woken: Woken::Notified,
            rsp,
            tp,
            stack,
            net_seen: 0,
        };
        self.used |= 1 << i;
        self.ready |= 1 << i;
        Some(tid)
    }

    /// Whether `tid` is alive, finished, or was never handed out.
    pub fn join_state(&self, tid: u32) -> JoinState {
        let mut used = self.used;
        while used != 0 {
            let i = used.trailing_zeros() as usize;
            used &= used - 1;
            if self.threads[i].tid == tid {
                return match self.threads[i].state {
                    State::Exited => JoinState::Finished,
                    _ => JoinState::Alive(i),
                };
            }
        }
        if tid >= MAIN_TID && tid < self.next_tid {
            JoinState::Finished
        } else {
            JoinState::Unknown
        }
    }

    /// The running app thread gives up the CPU but stays runnable.
    pub fn yield_current(&mut self) {
        if let Some(i) = self.current {
            self.threads[i].state = State::Ready;
            self.ready |= 1 << i;
        }
    }

    /// The running app thread waits for `wait` or until monotonic time `deadline`.
    pub fn block(&mut self, wait: Wait, deadline: u64) {
        if let Some(i) = self.current {
            let t = &mut self.threads[i];
            t.state = State::Blocked(wait);
            t.deadline = deadline;
            t.woken = Woken::Notified;
            self.ready &= !(1 << i);
            self.next_deadline = self.next_deadline.min(deadline);
        }
    }

    /// The running app thread's record.
    pub fn current_mut(&mut self) -> Option<&mut Thread> {
        self.current.map(|i| &mut self.threads[i])
    }

    /// How the running thread's last wait ended.
    pub fn current_woken(&self) -> Woken {
        self.current
            .map_or(Woken::Notified, |i| self.threads[i].woken)
    }

    /// The running app thread finished: threads joining it may go on.
    pub fn exit_current(&mut self) {
        let Some(i) = self.current else { return };
        let tid = self.threads[i].tid;
        self.threads[i].state = State::Exited;
        self.ready &= !(1 << i);
        self.exited |= 1 << i;
        self.wake_where(usize::MAX, |w| w == Wait::Join(tid));
    }

    /// Makes the blocked thread in slot `i` ready.
    fn wake(&mut self, i: usize, how: Woken) {
        let t = &mut self.threads[i];
        t.state = State::Ready;
        t.woken = how;
        t.deadline = NEVER;
        self.ready |= 1 << i;
    }

    /// Wakes up to `count` threads whose wait matches; returns how many.
    fn wake_where(&mut self, count: usize, matches: impl Fn(Wait) -> bool) -> usize {
        let mut woken = 0;
        let mut used = self.used;
        while used != 0 && woken < count {
            let i = used.trailing_zeros() as usize;
            used &= used - 1;
            if let State::Blocked(w) = self.threads[i].state
                && matches(w)
            {
                self.wake(i, Woken::Notified);
                woken += 1;
            }
        }
        woken
    }

    /// Wakes up to `count` threads waiting on the futex word at `address`; how many.
    pub fn wake_futex(&mut self, address: usize, count: usize) -> usize {
        self.wake_where(count, |w| w == Wait::Futex(address))
    }

    /// Wakes every thread waiting for the network (it made progress).
    pub fn wake_network(&mut self) -> usize {
        self.wake_where(usize::MAX, |w| w == Wait::Network)
    }

    /// Wakes every blocked thread whose deadline is at or before `now` (timed out) and
    /// recomputes the earliest remaining deadline.
    pub fn expire(&mut self, now: u64) {
        if now < self.next_deadline {
            return;
        }
        let mut next = NEVER;
        let mut used = self.used;
        while used != 0 {
            let i = used.trailing_zeros() as usize;
            used &= used - 1;
            if let State::Blocked(_) = self.threads[i].state {
                let deadline = self.threads[i].deadline;
                if deadline <= now {
                    self.wake(i, Woken::TimedOut);
                } else {
                    next = next.min(deadline);
                }
            }
        }
        self.next_deadline = next;
    }

    /// No blocked thread times out before this (monotonic ns, or [`NEVER`]).
    pub fn next_deadline(&self) -> u64 {
        self.next_deadline
    }

    /// Whether finished threads wait for their stacks to be freed.
    pub fn has_exited(&self) -> bool {
        self.exited != 0
    }

    /// Takes one finished thread out of its slot: its stack and thread pointer, to free.
    pub fn reap(&mut self) -> Option<((u64, u64), u64)> {
        let i = self.exited.trailing_zeros() as usize;
        if i >= MAX_THREADS {
            return None;
        }
        let t = self.threads[i];
        self.threads[i] = Thread::FREE;
        self.exited &= !(1 << i);
        self.used &= !(1 << i);
        Some((t.stack, t.tp))
    }

    /// Whether an app thread other than the running one is ready.
    pub fn others_ready(&self) -> bool {
        let me = self.current.map_or(0, |i| 1 << i);
        self.ready & !me != 0
    }

    /// The next ready thread in round-robin order after the one that ran last (itself
    /// last of all, if it is ready); `None` when no app thread is ready.
    pub fn pick(&self) -> Option<usize> {
        if self.ready == 0 {
            return None;
        }
        let start = (self.last + 1) % MAX_THREADS;
        let offset = self.ready.rotate_right(start as u32).trailing_zeros() as usize;
        Some((start + offset) % MAX_THREADS)
    }

    /// Slot `i` (ready) runs now.
    pub fn run(&mut self, i: usize) {
        self.ready &= !(1 << i);
        self.threads[i].state = State::Running;
        self.current = Some(i);
        self.last = i;
    }

    /// The idle thread runs now.
    pub fn run_idle(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_with(n: usize) -> (RunQueue, Vec<u32>) {
        let mut q = RunQueue::new();
        let tids = (0..n)
            .map(|k| q.add((0x1000 * k as u64, 0x1000), 0, 0).unwrap())
            .collect();
        (q, tids)
    }

    #[test]
    fn round_robin_visits_every_ready_thread_before_repeating() {
        let (mut q, _) = queue_with(3);
        let mut order = Vec::new();
        for _ in 0..8 {
            q.yield_current();
            let next = q.pick().unwrap();
            q.run(next);
            order.push(next);
        }
        assert_eq!(order, [1, 2, 3, 0, 1, 2, 3, 0]);
    }

    #[test]
    fn a_lone_ready_thread_picks_itself_and_none_when_all_block() {
        let mut q = RunQueue::new();
        assert!(!q.others_ready());
        q.yield_current();
        assert_eq!(q.pick(), Some(0));
        q.run(0);
        q.block(Wait::Sleep, 100);
        assert_eq!(q.pick(), None);
    }

    #[test]
    fn futex_wake_wakes_at_most_count_waiters_on_that_address_only() {
        let (mut q, _) = queue_with(3);
        for i in 0..3 {
            q.run(i);
            q.block(Wait::Futex(if i == 2 { 0x20 } else { 0x10 }), NEVER);
        }
        assert_eq!(q.wake_futex(0x10, 1), 1);
        assert_eq!(q.wake_futex(0x10, 5), 1);
        assert_eq!(q.wake_futex(0x10, 5), 0);
        assert_eq!(q.thread(2).state, State::Blocked(Wait::Futex(0x20)));
        assert_eq!(q.thread(0).woken, Woken::Notified);
    }

    #[test]
    fn deadlines_time_out_in_order_and_the_next_one_is_tracked() {
        let (mut q, _) = queue_with(2);
        q.run(0);
        q.block(Wait::Futex(8), 300);
        q.run(1);
        q.block(Wait::Sleep, 100);
        q.run(2);
        q.block(Wait::Network, NEVER);
        assert_eq!(q.next_deadline(), 100);
        q.expire(99);
        assert_eq!(q.pick(), None);
        q.expire(100);
        assert_eq!(q.thread(1).state, State::Ready);
        assert_eq!(q.thread(1).woken, Woken::TimedOut);
        assert_eq!(q.next_deadline(), 300);
        assert_eq!(q.wake_network(), 1);
        assert_eq!(q.thread(2).woken, Woken::Notified);
    }

    #[test]
    fn join_sees_alive_finished_and_unknown_threads() {
        let (mut q, tids) = queue_with(2);
        q.run(0);
        q.block(Wait::Join(tids[0]), NEVER);
        assert_eq!(q.join_state(tids[0]), JoinState::Alive(1));
        q.run(1);
        q.exit_current();
        assert_eq!(q.thread(0).state, State::Ready, "the joiner is woken");
        assert_eq!(q.join_state(tids[0]), JoinState::Finished);
        assert_eq!(q.reap(), Some(((0, 0x1000), 0)));
        assert_eq!(q.reap(), None);
        assert_eq!(
            q.join_state(tids[0]),
            JoinState::Finished,
            "after reaping too"
        );
        assert_eq!(q.join_state(tids[1] + 1), JoinState::Unknown);
        assert_eq!(q.join_state(0), JoinState::Unknown);
    }

    #[test]
    fn slots_run_out_and_are_reused_with_new_ids() {
        let (mut q, tids) = queue_with(MAX_THREADS - 1);
        assert_eq!(q.add((0, 0), 0, 0), None);
        q.run(5);
        q.exit_current();
        q.reap();
        let tid = q.add((0, 0), 0, 0).unwrap();
        assert!(tid > *tids.last().unwrap(), "ids are not reused");
        assert_eq!(q.join_state(tid), JoinState::Alive(5));
    }
}

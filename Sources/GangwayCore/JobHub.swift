import DequeModule
import GangwayAMQPCore
import NIOCore
import Synchronization

// JSON reading of progress events; off the request pass-through path.
import Foundation

/// What one edge knows of jobs, learnt from the events on `gangway.events` (`job.<id>.<kind>`
/// with `x-seq`), and the SSE clients following them.
///
/// Every edge consumes the events through a queue of its own, so any edge can answer for any
/// job. History is bounded per job (``historyLimit`` events), in jobs (``jobLimit``, the
/// oldest forgotten first), in bytes (``byteLimit`` of event bodies in all, the oldest jobs
/// forgotten first, then the oldest events of a job that alone holds more) and in age (a
/// finished job is forgotten ``finishedAgeMilliseconds`` after its last event). Live events
/// go to each follower's ``SSEOutbox``, which cuts off a client that does not read rather
/// than let it grow memory.
public final class JobHub: Sendable {
    public struct Event: Sendable {
        public var seq: Int
        public var kind: String
        public var body: ByteBuffer
    }

    public struct Status: Sendable {
        public var id: String
        public var status: String
        public var percent: Double?
        public var message: String?
        public var result: ByteBuffer?
        public var error: ByteBuffer?
        public var created: Int64
        public var updated: Int64
        public var lastSeq: Int
        /// The job's route answers a finished job's status with a redirect to its result.
        public var resultRedirect = false

        public var isFinished: Bool { status == "succeeded" || status == "failed" || status == "cancelled" }
    }

    /// A follower's view: the history after its Last-Event-ID; live events go to its outbox.
    public struct Follow: Sendable {
        /// The follower asked to resume from an event older than the kept history.
        public var reset: Bool
        public var history: [Event]
        /// The job has finished: the history is all there is, and the outbox is not followed.
        public var finished: Bool
        /// For ``JobHub/unfollow(jobID:follower:)``.
        public var follower: Int
    }

    struct Follower: Sendable {
        let outbox: SSEOutbox
    }

    struct Job {
        var status: Status
        var events: Deque<Event> = []
        var droppedBefore = 0
        var followers: [Int: Follower] = [:]
        var idempotencyKey: String?
        /// The bytes of the event bodies in `events`.
        var bytes = 0

        /// Forgets the oldest event kept; a follower resuming from before it gets a reset.
        /// - Returns: the bytes given back.
        mutating func dropOldestEvent() -> Int {
            guard let first = events.popFirst() else { return 0 }
            droppedBefore = events.first?.seq ?? 0
            bytes -= first.body.readableBytes
            return first.body.readableBytes
        }
    }

    struct State {
        var jobs: [String: Job] = [:]
        /// Job ids, oldest first.
        var order: Deque<String> = []
        var nextFollower = 0
        /// `<route> <Idempotency-Key>` → job id, for jobs still remembered.
        var idempotency: [String: String] = [:]
        /// Events taken with a `x-seq` more than one past the job's last (``record(jobID:kind:seq:body:)``).
        var eventGaps = 0
        /// The bytes of every job's kept event bodies.
        var bytes = 0
        /// Jobs forgotten before their time to stay within ``byteLimit``.
        var forgottenForBytes = 0
    }

    private let state = Mutex(State())
    public let historyLimit: Int
    public let jobLimit: Int
    /// The bytes of event bodies kept for all jobs together.
    public let byteLimit: Int

    /// Milliseconds a finished job is kept after its last event (the event log's retention).
    public let finishedAgeMilliseconds: Int64

    public static let defaultByteLimit = 256 << 20

    public init(historyLimit: Int = 1000, jobLimit: Int = 10_000, byteLimit: Int = JobHub.defaultByteLimit, finishedAgeMilliseconds: Int64 = 3_600_000) {
        self.historyLimit = historyLimit
        self.jobLimit = jobLimit
        self.byteLimit = byteLimit
        self.finishedAgeMilliseconds = finishedAgeMilliseconds
    }

    // MARK: Catching up with the event log

    /// How far this edge has got with the event log's history.
    private let replay = LogReplay(quietNanoseconds: JobHub.replayQuiet)
    /// How long the event log must stay quiet after its consumer connected before this edge
    /// counts as caught up with the history.
    public static let replayQuiet: UInt64 = 300_000_000

    /// The event log's consumer connected (`true`), so its replay of the history starts over,
    /// or lost its connection (`false`).
    /// - Parameter marker: the marker published into the log for this connection, if any.
    public func replayRestarted(_ connected: Bool, marker: String? = nil, now: UInt64 = NIODeadline.now().uptimeNanoseconds) {
        replay.restarted(connected, marker: marker, now: now)
    }

    /// The marker for this connection could not be published: quiet tells instead.
    public func replayMarkerLost(_ marker: String) {
        replay.markerLost(marker)
    }

    /// A message came from the event log (replayed or live); `marker` is the marker it
    /// carries, if it is one.
    public func replayDelivered(marker: String? = nil, now: UInt64 = NIODeadline.now().uptimeNanoseconds) {
        replay.delivered(marker: marker, now: now)
    }

    /// Whether this edge has caught up with the event log: its consumer is connected, and the
    /// marker it published has come back (without one: no event has come for ``replayQuiet``
    /// since the later of the connection and the last event).
    public func isReplaySettled(now: UInt64 = NIODeadline.now().uptimeNanoseconds) -> Bool {
        replay.isSettled(now: now)
    }

    /// For a job this edge does not know: waits, at most `limit`, until it learns of the job or
    /// has caught up with the event log. An edge that has just started (or reconnected) is
    /// still replaying the history, and a job it has not reached yet is not unknown.
    /// - Returns: whether the job is known.
    public func awaitKnown(jobID: String, limit: Duration = .seconds(3)) async -> Bool {
        if status(of: jobID) != nil { return true }
        _ = await replay.awaitSettled(limit: limit) { self.status(of: jobID) != nil }
        return status(of: jobID) != nil
    }

    /// Forgets the oldest jobs while they are finished and past their age.
    private func expire(_ s: inout State, now: Int64) {
        while let first = s.order.first, let job = s.jobs[first], job.status.isFinished, now - job.status.updated > finishedAgeMilliseconds {
            Self.forgetOldest(&s)
        }
    }

    /// Forgets the oldest job, ending its followers' streams.
    private static func forgetOldest(_ s: inout State) {
        guard let oldest = s.order.popFirst(), let gone = s.jobs.removeValue(forKey: oldest) else { return }
        s.bytes -= gone.bytes
        gone.followers.values.forEach { $0.outbox.finish() }
        if let key = gone.idempotencyKey, s.idempotency[key] == oldest { s.idempotency[key] = nil }
    }

    /// Keeps the event bodies within ``byteLimit``: forgets the oldest jobs other than `jobID`
    /// (the one that just grew), then drops `jobID`'s own oldest events, keeping its last.
    private func trimBytes(_ s: inout State, keeping jobID: String) {
        while s.bytes > byteLimit, let oldest = s.order.first, oldest != jobID {
            Self.forgetOldest(&s)
            s.forgottenForBytes += 1
        }
        // In place, as in ``record(jobID:kind:seq:body:)``.
        while s.bytes > byteLimit, let count = s.jobs[jobID]?.events.count, count > 1 {
            s.bytes -= s.jobs[jobID]!.dropOldestEvent()
        }
    }

    /// Records an event; called on the consumer thread. `seq` 0 is the edge's own "queued"
    /// notice: it creates the job but is no event for followers. Repeated or older sequence
    /// numbers (a redelivered job reporting again) are ignored.
    /// - Returns: the sequence numbers skipped, when the event comes more than one after the
    ///   last one taken (the events between never reached this edge: its followers will not
    ///   see them). A job first seen at a later event is no gap: the event log's retention may
    ///   have dropped its beginning.
    @discardableResult
    public func record(jobID: String, kind: String, seq: Int, body: ByteBuffer) -> ClosedRange<Int>? {
        let now = WireContract.epochMilliseconds()
        var progress: (Double?, String?) = (nil, nil)
        if kind == "progress", let json = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] {
            progress = ((json["percent"] as? NSNumber)?.doubleValue, json["message"] as? String)
        }
        let (followers, event, finished, skipped): ([Follower], Event?, Bool, ClosedRange<Int>?) = state.withLock { s in
            expire(&s, now: now)
            if s.jobs[jobID] == nil {
                s.jobs[jobID] = Job(status: Status(id: jobID, status: "queued", created: now, updated: now, lastSeq: 0))
                s.order.append(jobID)
                if s.order.count > jobLimit { Self.forgetOldest(&s) }
            }
            guard seq > 0, let lastSeq = s.jobs[jobID]?.status.lastSeq, seq > lastSeq else { return ([], nil, false, nil) }
            let skipped = lastSeq > 0 && seq > lastSeq + 1 ? (lastSeq + 1)...(seq - 1) : nil
            if skipped != nil { s.eventGaps += 1 }
            let event = Event(seq: seq, kind: kind, body: body)
            // In place: a copy of the job would copy its whole history on every event.
            let (followers, finished, added) = Self.apply(event, progress: progress, now: now, historyLimit: historyLimit, to: &s.jobs[jobID]!)
            s.bytes += added
            if s.bytes > byteLimit { trimBytes(&s, keeping: jobID) }
            return (followers, event, finished, skipped)
        }
        guard let event, !followers.isEmpty else { return skipped }
        let encoded = Self.encode(event)
        let outboxes = followers.map(\.outbox)
        // An outbox that overflows ends itself and has its client cut off.
        SSEOutbox.fanOut(encoded, to: outboxes, thenFinish: finished)
        return skipped
    }

    /// Events taken that skipped sequence numbers, since start.
    public var eventGaps: Int { state.withLock { $0.eventGaps } }

    /// What the history holds: jobs, bytes of event bodies, and jobs forgotten early (since
    /// start) to stay within ``byteLimit``.
    public var usage: (jobs: Int, bytes: Int, forgottenForBytes: Int) {
        state.withLock { ($0.jobs.count, $0.bytes, $0.forgottenForBytes) }
    }

    /// Adds `event` to `job`'s history and status.
    /// - Returns: the job's followers, whether the job has finished, and the change in the
    ///   bytes its history holds.
    private static func apply(_ event: Event, progress: (Double?, String?), now: Int64, historyLimit: Int, to job: inout Job) -> ([Follower], Bool, Int) {
        job.status.lastSeq = event.seq
        job.status.updated = now
        switch event.kind {
        case "progress":
            job.status.status = "running"
            if let p = progress.0 { job.status.percent = p }
            if let m = progress.1 { job.status.message = m }
        case "log":
            if job.status.status == "queued" { job.status.status = "running" }
        case "done":
            job.status.status = "succeeded"
            job.status.percent = 100
            job.status.result = event.body
        case "failed":
            job.status.status = "failed"
            job.status.error = event.body
        case "cancelled":
            job.status.status = "cancelled"
        default:
            break
        }
        job.events.append(event)
        job.bytes += event.body.readableBytes
        var added = event.body.readableBytes
        while job.events.count > historyLimit { added -= job.dropOldestEvent() }
        return (Array(job.followers.values), job.status.isFinished, added)
    }

    /// One event as Server-Sent Events: `id: <seq>`, `event: <kind>`, `data: <body>`.
    public static func encode(_ event: Event) -> ByteBuffer {
        SSEEncoder.event(id: String(event.seq), name: event.kind, data: String(buffer: event.body))
    }

    /// Claims an idempotency key for a job about to be submitted.
    /// - Returns: the job that holds the key already (submitted here or announced by another
    ///   edge), or nil when `jobID` now holds it.
    public func claim(idempotencyKey key: String, for jobID: String) -> String? {
        state.withLock { s in
            if let existing = s.idempotency[key] { return existing }
            s.idempotency[key] = jobID
            return nil
        }
    }

    /// The job that holds an idempotency key, if this edge knows it.
    public func job(forIdempotencyKey key: String) -> String? {
        state.withLock { $0.idempotency[key] }
    }

    /// Gives a key back after the submission failed.
    public func release(idempotencyKey key: String, for jobID: String) {
        state.withLock { s in
            if s.idempotency[key] == jobID { s.idempotency[key] = nil }
        }
    }

    /// Records that a job's route redirects a finished job's status to its result.
    public func setResultRedirect(for jobID: String) {
        state.withLock { $0.jobs[jobID]?.status.resultRedirect = true }
    }

    /// Records which key a job was submitted under (from its queued notice on any edge). An
    /// announced job is published: it wins over a claim still in progress here.
    public func remember(idempotencyKey key: String, for jobID: String) {
        state.withLock { s in
            s.idempotency[key] = jobID
            s.jobs[jobID]?.idempotencyKey = key
        }
    }

    public func status(of jobID: String) -> Status? {
        state.withLock { $0.jobs[jobID]?.status }
    }

    /// Starts following a job: returns the history after `lastEventID`, and sends live events
    /// to `outbox` until the job finishes or ``unfollow(jobID:follower:)``; `nil` for an
    /// unknown job.
    public func follow(jobID: String, lastEventID: Int?, outbox: SSEOutbox) -> Follow? {
        state.withLock { s in
            guard let job = s.jobs[jobID] else { return nil }
            let after = lastEventID ?? 0
            let reset = lastEventID != nil && job.droppedBefore > 0 && after < job.droppedBefore - 1
            let history = reset ? Array(job.events) : job.events.filter { $0.seq > after }
            let finished = job.status.isFinished
            s.nextFollower += 1
            if !finished {
                s.jobs[jobID]!.followers[s.nextFollower] = Follower(outbox: outbox)
            }
            return Follow(reset: reset, history: history, finished: finished, follower: s.nextFollower)
        }
    }

    /// Stops sending a job's events to a follower.
    public func unfollow(jobID: String, follower: Int) {
        state.withLock { _ = $0.jobs[jobID]?.followers.removeValue(forKey: follower) }
    }
}

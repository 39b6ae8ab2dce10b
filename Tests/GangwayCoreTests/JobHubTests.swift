import GangwayCore
import GangwayAMQPCore
import NIOCore
import Testing

@Suite("Job hub: status, history, followers")
struct JobHubTests {
    func body(_ s: String) -> ByteBuffer { ByteBuffer(string: s) }
    func outbox(_ limit: Int = 1 << 20) -> SSEOutbox { SSEOutbox(limit: limit) }

    /// Everything an outbox delivers until it ends, and how it ended.
    func drain(_ outbox: SSEOutbox) async -> (String, SSEOutbox.End) {
        var text = ""
        while true {
            switch await outbox.next() {
            case .bytes(let buffers): buffers.forEach { text += String(buffer: $0) }
            case .end(let end): return (text, end)
            }
        }
    }

    @Test("events drive the status; the queued notice creates the job without an event")
    func status() {
        let hub = JobHub()
        hub.record(jobID: "j", kind: "queued", seq: 0, body: body("{}"))
        #expect(hub.status(of: "j")?.status == "queued")
        hub.record(jobID: "j", kind: "progress", seq: 1, body: body(#"{"percent": 40, "message": "half"}"#))
        #expect(hub.status(of: "j")?.status == "running")
        #expect(hub.status(of: "j")?.percent == 40 && hub.status(of: "j")?.message == "half")
        hub.record(jobID: "j", kind: "done", seq: 2, body: body(#"{"ok":1}"#))
        #expect(hub.status(of: "j")?.status == "succeeded")
        #expect(hub.status(of: "j")?.result.map { String(buffer: $0) } == #"{"ok":1}"#)
        #expect(hub.status(of: "nope") == nil)
    }

    @Test("repeated and older sequence numbers are ignored (a redelivered job reporting again)")
    func dedupe() {
        let hub = JobHub()
        for seq in [1, 2, 1, 2, 3] { hub.record(jobID: "j", kind: "log", seq: seq, body: body("{}")) }
        let follow = hub.follow(jobID: "j", lastEventID: nil, outbox: outbox())
        #expect(follow?.history.map(\.seq) == [1, 2, 3])
    }

    @Test("an event past a skipped sequence number is taken and reported as a gap; a job first seen late is not")
    func gaps() {
        let hub = JobHub()
        #expect(hub.record(jobID: "j", kind: "queued", seq: 0, body: body("{}")) == nil)
        #expect(hub.record(jobID: "j", kind: "log", seq: 1, body: body("{}")) == nil)
        #expect(hub.record(jobID: "j", kind: "log", seq: 3, body: body("{}")) == 2...2)
        #expect(hub.record(jobID: "j", kind: "log", seq: 2, body: body("{}")) == nil, "older than the last: ignored")
        #expect(hub.record(jobID: "j", kind: "log", seq: 7, body: body("{}")) == 4...6)
        #expect(hub.status(of: "j")?.lastSeq == 7 && hub.eventGaps == 2)
        // Replayed from a log whose beginning was dropped: the first event seen is no gap.
        #expect(hub.record(jobID: "late", kind: "log", seq: 40, body: body("{}")) == nil)
        #expect(hub.eventGaps == 2)
    }

    @Test("history is bounded; resuming before it gets reset and everything kept")
    func historyBound() {
        let hub = JobHub(historyLimit: 3)
        for seq in 1...6 { hub.record(jobID: "j", kind: "log", seq: seq, body: body("{}")) }
        let full = hub.follow(jobID: "j", lastEventID: nil, outbox: outbox())
        #expect(full?.history.map(\.seq) == [4, 5, 6] && full?.reset == false)
        let old = hub.follow(jobID: "j", lastEventID: 1, outbox: outbox())
        #expect(old?.reset == true && old?.history.map(\.seq) == [4, 5, 6])
        let recent = hub.follow(jobID: "j", lastEventID: 4, outbox: outbox())
        #expect(recent?.reset == false && recent?.history.map(\.seq) == [5, 6])
    }

    @Test("a live follower gets new events, encoded as SSE, and its stream ends after done")
    func live() async {
        let hub = JobHub()
        hub.record(jobID: "j", kind: "log", seq: 1, body: body("{}"))
        let box = outbox()
        guard let follow = hub.follow(jobID: "j", lastEventID: 1, outbox: box) else {
            Issue.record("unknown job")
            return
        }
        #expect(follow.history.isEmpty && !follow.finished)
        hub.record(jobID: "j", kind: "progress", seq: 2, body: body(#"{"percent":50}"#))
        hub.record(jobID: "j", kind: "done", seq: 3, body: body("{}"))
        let (text, end) = await drain(box)
        #expect(text == "id: 2\nevent: progress\ndata: {\"percent\":50}\n\nid: 3\nevent: done\ndata: {}\n\n")
        #expect(end == .finished)
    }

    @Test("a follower that does not read is cut off at its byte bound, not grown")
    func slowFollower() async {
        let hub = JobHub()
        hub.record(jobID: "j", kind: "log", seq: 1, body: body("{}"))
        let box = outbox(100)
        guard let follow = hub.follow(jobID: "j", lastEventID: 1, outbox: box) else { return }
        for seq in 2...20 { hub.record(jobID: "j", kind: "log", seq: seq, body: body("{}")) }
        #expect(box.end == .overflow && box.queuedBytes == 0)
        let (text, end) = await drain(box)
        #expect(text.isEmpty && end == .overflow)
        hub.unfollow(jobID: "j", follower: follow.follower)
    }

    @Test("the oldest jobs are forgotten past the job limit")
    func jobLimit() {
        let hub = JobHub(jobLimit: 2)
        for id in ["a", "b", "c"] { hub.record(jobID: id, kind: "queued", seq: 0, body: body("{}")) }
        #expect(hub.status(of: "a") == nil && hub.status(of: "b") != nil && hub.status(of: "c") != nil)
    }

    @Test("event bodies are bounded in bytes: the oldest jobs are forgotten first, their followers' streams ended")
    func byteLimitForgetsOldest() async {
        let hub = JobHub(byteLimit: 1000)
        hub.record(jobID: "a", kind: "log", seq: 1, body: body(String(repeating: "a", count: 400)))
        let follower = outbox()
        let follow = try! #require(hub.follow(jobID: "a", lastEventID: nil, outbox: follower))
        #expect(!follow.finished)
        hub.record(jobID: "b", kind: "log", seq: 1, body: body(String(repeating: "b", count: 400)))
        #expect(hub.usage.jobs == 2 && hub.usage.bytes == 800 && hub.usage.forgottenForBytes == 0)
        // 1 200 bytes: "a", the oldest, goes.
        hub.record(jobID: "c", kind: "log", seq: 1, body: body(String(repeating: "c", count: 400)))
        #expect(hub.status(of: "a") == nil && hub.status(of: "b") != nil && hub.status(of: "c") != nil)
        #expect(hub.usage.jobs == 2 && hub.usage.bytes == 800 && hub.usage.forgottenForBytes == 1)
        let (_, end) = await drain(follower)
        #expect(end == .finished)
        // Events trimmed by the count limit give their bytes back too.
        let counted = JobHub(historyLimit: 2)
        for seq in 1...5 { counted.record(jobID: "j", kind: "log", seq: seq, body: body("12345")) }
        #expect(counted.usage.bytes == 10)
    }

    @Test("a job that alone passes the byte bound keeps its newest events; resuming before them gets a reset")
    func byteLimitTrimsOneJob() {
        let hub = JobHub(byteLimit: 1000)
        for seq in 1...5 { hub.record(jobID: "j", kind: "log", seq: seq, body: body(String(repeating: "x", count: 300))) }
        #expect(hub.usage.bytes == 900 && hub.usage.forgottenForBytes == 0)
        let follow = hub.follow(jobID: "j", lastEventID: 1, outbox: outbox())
        #expect(follow?.reset == true && follow?.history.map(\.seq) == [3, 4, 5])
        // One event larger than the bound is still kept, alone.
        hub.record(jobID: "j", kind: "done", seq: 6, body: body(String(repeating: "y", count: 2000)))
        #expect(hub.usage.bytes == 2000 && hub.status(of: "j")?.status == "succeeded")
        #expect(hub.follow(jobID: "j", lastEventID: nil, outbox: outbox())?.history.map(\.seq) == [6])
    }

    @Test("a finished job is forgotten after its age; an unfinished one is kept")
    func age() async throws {
        let hub = JobHub(finishedAgeMilliseconds: 50)
        hub.record(jobID: "done", kind: "done", seq: 1, body: body("{}"))
        hub.record(jobID: "running", kind: "progress", seq: 1, body: body("{}"))
        try await Task.sleep(for: .milliseconds(120))
        hub.record(jobID: "new", kind: "queued", seq: 0, body: body("{}"))
        #expect(hub.status(of: "done") == nil)
        #expect(hub.status(of: "running") != nil && hub.status(of: "new") != nil)
    }

    @Test("an idempotency key is claimed once; a failed submission gives it back")
    func idempotency() {
        let hub = JobHub()
        #expect(hub.claim(idempotencyKey: "r k", for: "j1") == nil)
        #expect(hub.claim(idempotencyKey: "r k", for: "j2") == "j1")
        hub.release(idempotencyKey: "r k", for: "j2")
        #expect(hub.claim(idempotencyKey: "r k", for: "j3") == "j1")
        hub.release(idempotencyKey: "r k", for: "j1")
        #expect(hub.claim(idempotencyKey: "r k", for: "j3") == nil)
        hub.remember(idempotencyKey: "r other", for: "j9")
        #expect(hub.claim(idempotencyKey: "r other", for: "j10") == "j9")
        // Announced by another edge while this one's claim was in progress: the announced job
        // wins, and giving back the losing claim does not forget it.
        #expect(hub.claim(idempotencyKey: "r race", for: "mine") == nil)
        hub.remember(idempotencyKey: "r race", for: "theirs")
        hub.release(idempotencyKey: "r race", for: "mine")
        #expect(hub.job(forIdempotencyKey: "r race") == "theirs")
    }
    @Test("caught up with the event log only once it has been quiet for a while since the consumer connected")
    func replaySettles() {
        let hub = JobHub()
        let quiet = JobHub.replayQuiet
        #expect(!hub.isReplaySettled(now: 10 * quiet), "not before the consumer has connected")
        hub.replayRestarted(true, now: quiet)
        #expect(!hub.isReplaySettled(now: quiet + quiet / 2))
        #expect(hub.isReplaySettled(now: 2 * quiet))
        hub.replayDelivered(now: 3 * quiet)
        #expect(!hub.isReplaySettled(now: 3 * quiet + quiet / 2), "events still coming in")
        #expect(hub.isReplaySettled(now: 4 * quiet))
        hub.replayRestarted(false, now: 5 * quiet)
        #expect(!hub.isReplaySettled(now: 10 * quiet), "not while disconnected")
        hub.replayRestarted(true, now: 11 * quiet)
        #expect(!hub.isReplaySettled(now: 11 * quiet + 1), "the replay starts over")
    }

    @Test("with a marker in the event log, caught up when it comes back, however busy the log")
    func replaySettlesByMarker() async {
        let hub = JobHub()
        let quiet = JobHub.replayQuiet
        hub.replayRestarted(true, marker: "edge-1.a", now: quiet)
        #expect(!hub.isReplaySettled(now: 10 * quiet), "quiet does not count while the marker is on its way")
        hub.replayDelivered(marker: "edge-2.b", now: 11 * quiet)
        #expect(!hub.isReplaySettled(now: 12 * quiet), "another edge's marker")
        hub.replayDelivered(marker: "edge-1.a", now: 12 * quiet)
        #expect(hub.isReplaySettled(now: 12 * quiet))
        // A marker that could not be published: back to quiet.
        hub.replayRestarted(true, marker: "edge-1.c", now: 20 * quiet)
        hub.replayMarkerLost("edge-1.c")
        #expect(hub.isReplaySettled(now: 22 * quiet))
        let marker = WireContract.eventLogMarker("edge-1.d")
        #expect(marker.routingKey == "job.marker" && marker.mandatory && marker.exchange == WireContract.eventsExchange)
    }

    @Test("a lookup of a job not known yet waits for the replay to reach it, and no longer than it must")
    func awaitKnown() async throws {
        let hub = JobHub()
        hub.replayRestarted(true)
        let learnt = Task {
            try await Task.sleep(for: .milliseconds(50))
            hub.replayDelivered()
            hub.record(jobID: "a", kind: "progress", seq: 1, body: ByteBuffer(string: #"{"percent":10}"#))
        }
        #expect(await hub.awaitKnown(jobID: "a", limit: .seconds(5)))
        try await learnt.value
        // Unknown for good: the answer comes once the log has been quiet, well before the limit.
        let start = ContinuousClock.now
        #expect(!(await hub.awaitKnown(jobID: "b", limit: .seconds(5))))
        #expect(ContinuousClock.now - start < .seconds(2))
    }
}

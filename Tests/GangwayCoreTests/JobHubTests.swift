import GangwayCore
import NIOCore
import Testing

@Suite("Job hub: status, history, followers")
struct JobHubTests {
    func body(_ s: String) -> ByteBuffer { ByteBuffer(string: s) }

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
        let follow = hub.follow(jobID: "j", lastEventID: nil)
        #expect(follow?.history.map(\.seq) == [1, 2, 3])
    }

    @Test("history is bounded; resuming before it gets reset and everything kept")
    func historyBound() {
        let hub = JobHub(historyLimit: 3)
        for seq in 1...6 { hub.record(jobID: "j", kind: "log", seq: seq, body: body("{}")) }
        let full = hub.follow(jobID: "j", lastEventID: nil)
        #expect(full?.history.map(\.seq) == [4, 5, 6] && full?.reset == false)
        let old = hub.follow(jobID: "j", lastEventID: 1)
        #expect(old?.reset == true && old?.history.map(\.seq) == [4, 5, 6])
        let recent = hub.follow(jobID: "j", lastEventID: 4)
        #expect(recent?.reset == false && recent?.history.map(\.seq) == [5, 6])
    }

    @Test("a live follower gets new events and its stream ends after done")
    func live() async {
        let hub = JobHub()
        hub.record(jobID: "j", kind: "log", seq: 1, body: body("{}"))
        guard let follow = hub.follow(jobID: "j", lastEventID: 1) else {
            Issue.record("unknown job")
            return
        }
        #expect(follow.history.isEmpty && !follow.finished)
        hub.record(jobID: "j", kind: "progress", seq: 2, body: body(#"{"percent":50}"#))
        hub.record(jobID: "j", kind: "done", seq: 3, body: body("{}"))
        var seen: [Int] = []
        for await event in follow.live { seen.append(event.seq) }
        #expect(seen == [2, 3])
    }

    @Test("a follower that does not read is cut off at its buffer, not grown")
    func slowFollower() async {
        let hub = JobHub(followerBuffer: 4)
        hub.record(jobID: "j", kind: "log", seq: 1, body: body("{}"))
        guard let follow = hub.follow(jobID: "j", lastEventID: 1) else { return }
        for seq in 2...20 { hub.record(jobID: "j", kind: "log", seq: seq, body: body("{}")) }
        var seen = 0
        for await _ in follow.live { seen += 1 }
        #expect(seen == 4)
    }

    @Test("the oldest jobs are forgotten past the job limit")
    func jobLimit() {
        let hub = JobHub(jobLimit: 2)
        for id in ["a", "b", "c"] { hub.record(jobID: id, kind: "queued", seq: 0, body: body("{}")) }
        #expect(hub.status(of: "a") == nil && hub.status(of: "b") != nil && hub.status(of: "c") != nil)
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
    }
}

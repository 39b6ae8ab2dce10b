import GangwayCore
import Testing

@Suite("Correlation map transcripts")
struct CorrelationMapTests {
    typealias Map = CorrelationMap<String, String, Int>

    @Test("waiting first, then the reply: the waiter is resumed with it")
    func waitThenReply() {
        var m = Map()
        let check1 = m.register("a")
        #expect(check1)
        guard case .suspended = m.wait("a", 1) else { Issue.record("expected suspended"); return }
        guard case .resume(let w, let r) = m.reply("a", "hello") else { Issue.record("expected resume"); return }
        #expect(w == 1 && r == "hello")
        #expect(m.count == 0)
    }

    @Test("a reply before the waiter is kept and handed over at once")
    func replyThenWait() {
        var m = Map()
        let check2 = m.register("a")
        #expect(check2)
        guard case .stored = m.reply("a", "early") else { Issue.record("expected stored"); return }
        guard case .replyAvailable(let r) = m.wait("a", 1) else { Issue.record("expected reply"); return }
        #expect(r == "early" && m.count == 0)
    }

    @Test("late, duplicate and foreign replies are counted and dropped")
    func unknownReplies() {
        var m = Map()
        let check3 = m.register("a")
        #expect(check3)
        _ = m.wait("a", 1)
        _ = m.reply("a", "first")
        guard case .unknown = m.reply("a", "duplicate") else { Issue.record("expected unknown"); return }
        guard case .unknown = m.reply("zzz", "foreign") else { Issue.record("expected unknown"); return }
        let check4 = m.register("b")
        #expect(check4)
        _ = m.reply("b", "one")
        guard case .unknown = m.reply("b", "two") else { Issue.record("second reply to a pending slot is unknown"); return }
        #expect(m.unknownReplies == 3)
    }

    @Test("a failure before the wait is kept and thrown at the wait; a failure after a reply is ignored")
    func failures() {
        var m = Map()
        _ = m.register("a")
        guard case .stored = m.fail("a", "returned") else { Issue.record("expected stored"); return }
        guard case .failed(let f) = m.wait("a", 1) else { Issue.record("expected failed"); return }
        #expect(f == "returned" && m.count == 0)
        _ = m.register("b")
        _ = m.wait("b", 2)
        guard case .resume(let w, let f2) = m.fail("b", "lost") else { Issue.record("expected resume"); return }
        #expect(w == 2 && f2 == "lost")
        _ = m.register("c")
        _ = m.reply("c", "ok")
        guard case .ignored = m.fail("c", "late") else { Issue.record("expected ignored"); return }
        guard case .replyAvailable(let r) = m.wait("c", 3) else { Issue.record("expected reply"); return }
        #expect(r == "ok")
    }

    @Test("an id cannot be registered twice while open")
    func duplicateRegister() {
        var m = Map()
        let check5 = m.register("a")
        #expect(check5)
        let check6 = !m.register("a")
        #expect(check6)
    }

    @Test("a slot registered with its waiter resumes it with the reply or a failure; the id stays taken until then")
    func registerWaiting() {
        var m = Map()
        let opened = m.register("a", waiting: 7)
        let again = m.register("a", waiting: 8) || m.register("a")
        #expect(opened && !again)
        guard case .resume(let waiter, let reply) = m.reply("a", "ok") else { Issue.record("expected resume"); return }
        #expect(waiter == 7 && reply == "ok")
        #expect(m.count == 0)
        let second = m.register("b", waiting: 9)
        #expect(second)
        guard case .resume(let failed, _) = m.fail("b", "unroutable") else { Issue.record("expected resume"); return }
        #expect(failed == 9 && m.count == 0)
    }

    @Test("removal at the deadline fails a suspended waiter; a later reply is unknown")
    func expire() {
        var m = Map()
        _ = m.register("a")
        _ = m.wait("a", 42)
        let check7 = m.remove("a") == 42
        #expect(check7)
        guard case .unknown = m.reply("a", "late") else { Issue.record("expected unknown"); return }
        #expect(m.unknownReplies == 1)
    }

    @Test("a slot removed before anyone waited makes the wait end at once")
    func removedBeforeWait() {
        var m = Map()
        _ = m.register("a")
        let check8 = m.remove("a") == nil
        #expect(check8)
        guard case .gone = m.wait("a", 1) else { Issue.record("expected gone"); return }
    }

    @Test("removeAll returns every suspended waiter and empties the map")
    func removeAll() {
        var m = Map()
        for (i, id) in ["a", "b", "c"].enumerated() {
            _ = m.register(id)
            if i != 1 { _ = m.wait(id, i) }
        }
        let check9 = Set(m.removeAll()) == [0, 2]
        #expect(check9)
        #expect(m.count == 0)
    }
}

@Suite("Deadline queue")
struct DeadlineQueueTests {
    @Test("ids come out when their deadline passes, per timeout, in order")
    func sweep() {
        var q = DeadlineQueue()
        q.add(id: "a", timeoutMilliseconds: 100, now: 0)
        q.add(id: "b", timeoutMilliseconds: 100, now: 10_000_000)
        q.add(id: "c", timeoutMilliseconds: 5, now: 0)
        let check10 = q.expired(now: 4_999_999).isEmpty
        #expect(check10)
        let check11 = q.expired(now: 5_000_000) == ["c"]
        #expect(check11)
        let check12 = q.expired(now: 100_000_000) == ["a"]
        #expect(check12)
        #expect(q.count == 1)
        let check13 = q.expired(now: 110_000_000) == ["b"]
        #expect(check13)
        #expect(q.count == 0)
    }
}

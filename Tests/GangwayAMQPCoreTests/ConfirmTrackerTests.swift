import GangwayAMQPCore
import Testing

@Suite("Publisher confirms, frame by frame")
struct ConfirmTrackerTests {
    @Test("tags start at 1 and a single ack confirms one publish")
    func singleAck() {
        var t = ConfirmTracker<String>()
        let check1 = t.published("a", messageID: nil) == 1
        #expect(check1)
        let check2 = t.published("b", messageID: nil) == 2
        #expect(check2)
        let settled = t.acked(deliveryTag: 1, multiple: false)
        #expect(settled.map(\.0) == ["a"])
        #expect(settled.map(\.1) == [.confirmed])
        #expect(t.pendingCount == 1)
    }

    @Test("a multiple ack settles every pending tag up to it, and only those")
    func multipleAck() {
        var t = ConfirmTracker<Int>()
        for i in 1...5 { _ = t.published(i, messageID: nil) }
        let settled = t.acked(deliveryTag: 3, multiple: true)
        #expect(settled.map(\.0) == [1, 2, 3])
        #expect(t.pendingCount == 2)
        let check3 = t.acked(deliveryTag: 5, multiple: true).map(\.0) == [4, 5]
        #expect(check3)
        #expect(t.pendingCount == 0)
    }

    @Test("out-of-order acks settle each tag once; a repeated ack settles nothing")
    func outOfOrder() {
        var t = ConfirmTracker<Int>()
        for i in 1...3 { _ = t.published(i, messageID: nil) }
        let check4 = t.acked(deliveryTag: 3, multiple: false).map(\.0) == [3]
        #expect(check4)
        let check5 = t.acked(deliveryTag: 1, multiple: false).map(\.0) == [1]
        #expect(check5)
        let check6 = t.acked(deliveryTag: 1, multiple: false).isEmpty
        #expect(check6)
        let check7 = t.acked(deliveryTag: 3, multiple: true).map(\.0) == [2]
        #expect(check7)
    }

    @Test("a return before the ack makes the outcome 'returned' with the broker's reason")
    func returnThenAck() {
        var t = ConfirmTracker<String>()
        _ = t.published("ok", messageID: "m1")
        _ = t.published("lost", messageID: "m2")
        let check8 = t.returned(messageID: "m2", replyCode: 312, replyText: "NO_ROUTE")
        #expect(check8)
        let settled = t.acked(deliveryTag: 2, multiple: true)
        #expect(settled.map(\.1) == [.confirmed, .returned(replyCode: 312, replyText: "NO_ROUTE")])
    }

    @Test("a return for an unknown or missing message id marks nothing")
    func unknownReturn() {
        var t = ConfirmTracker<String>()
        _ = t.published("a", messageID: "m1")
        let check9 = !t.returned(messageID: "nope", replyCode: 312, replyText: "NO_ROUTE")
        #expect(check9)
        let check10 = !t.returned(messageID: nil, replyCode: 312, replyText: "NO_ROUTE")
        #expect(check10)
        let check11 = t.acked(deliveryTag: 1, multiple: false).map(\.1) == [.confirmed]
        #expect(check11)
    }

    @Test("a nack settles as nacked")
    func nack() {
        var t = ConfirmTracker<String>()
        _ = t.published("a", messageID: nil)
        _ = t.published("b", messageID: nil)
        let check12 = t.nacked(deliveryTag: 2, multiple: true).map(\.1) == [.nacked, .nacked]
        #expect(check12)
    }

    @Test("reset hands back every pending token and restarts tags at 1")
    func reset() {
        var t = ConfirmTracker<String>()
        _ = t.published("a", messageID: "m1")
        _ = t.published("b", messageID: nil)
        _ = t.acked(deliveryTag: 1, multiple: false)
        let check13 = t.reset() == ["b"]
        #expect(check13)
        let check14 = t.published("c", messageID: "m1") == 1
        #expect(check14)
        // The old message id no longer matches the old publish.
        let check15 = t.acked(deliveryTag: 1, multiple: false).map(\.0) == ["c"]
        #expect(check15)
    }

    @Test("acks beyond the last published tag are ignored")
    func ackBeyond() {
        var t = ConfirmTracker<String>()
        _ = t.published("a", messageID: nil)
        let check16 = t.acked(deliveryTag: 9, multiple: false).isEmpty
        #expect(check16)
        let check17 = t.acked(deliveryTag: 9, multiple: true).map(\.0) == ["a"]
        #expect(check17)
    }

    @Test("a long run of publishes and acks stays consistent across compaction")
    func longRun() {
        var t = ConfirmTracker<Int>()
        var settled = 0
        for i in 1...10_000 {
            _ = t.published(i, messageID: nil)
            if i % 7 == 0 { settled += t.acked(deliveryTag: UInt64(i), multiple: true).count }
        }
        settled += t.acked(deliveryTag: 10_000, multiple: true).count
        #expect(settled == 10_000)
        #expect(t.pendingCount == 0)
    }
}

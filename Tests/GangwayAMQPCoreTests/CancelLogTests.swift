import GangwayAMQPCore
import Testing

@Suite("The cancel log: cancel messages kept for workers not there when they were sent")
struct CancelLogTests {
    @Test("a cancel message is persistent, mandatory, stamped, and says its id and time")
    func cancelMessage() throws {
        let before = WireContract.epochMilliseconds() / 1000 * 1000
        let message = WireContract.cancel(id: "job-7")
        #expect(message.exchange == WireContract.cancelExchange.name)
        #expect(message.mandatory, "a cancel that reaches no queue must come back, not be confirmed and lost")
        #expect(message.properties.deliveryMode == 2)
        let read = try #require(WireContract.cancelled(message.properties))
        #expect(read.id == "job-7")
        let at = try #require(read.at)
        #expect(at >= before && at <= WireContract.epochMilliseconds())
        // A worker in another language may send only the header, or only the correlation id.
        #expect(WireContract.cancelled(AMQPProperties(correlationID: "c-1"))?.id == "c-1")
        #expect(WireContract.cancelled(AMQPProperties(correlationID: "c-1"))?.at == nil)
        #expect(WireContract.cancelled(AMQPProperties()) == nil)
    }

    @Test("the cancel log is a stream queue bound to the cancel exchange")
    func cancelLog() {
        #expect(WireContract.cancelLogQueue.isStream && WireContract.cancelLogQueue.durable)
        #expect(WireContract.cancelLogBinding.source == WireContract.cancelExchange.name)
        #expect(WireContract.cancelLogBinding.destination == WireContract.cancelLogQueue.name)
    }

    @Test("a topology ensures a queue and a binding once")
    func ensuring() {
        let once = Topology().ensuring(WireContract.cancelExchange).ensuring(WireContract.cancelLogQueue).ensuring(WireContract.cancelLogBinding)
        let twice = once.ensuring(WireContract.cancelLogQueue).ensuring(WireContract.cancelLogBinding)
        #expect(twice == once)
        #expect(once.queues.map(\.name) == ["gangway.cancel.log"] && once.bindings.count == 1)
        // A queue of that name already declared (e.g. by the definitions file) is kept as it is.
        let own = Topology(queues: [QueueSpec(name: "gangway.cancel.log", arguments: ["x-queue-type": "stream", "x-max-age": "2h"])])
        #expect(own.ensuring(WireContract.cancelLogQueue) == own)
    }

    @Test("a log replay is caught up once connected and quiet since the later of the connection and the last message")
    func replay() {
        let ms: UInt64 = 1_000_000
        let replay = LogReplay(quietNanoseconds: 300 * ms)
        #expect(!replay.isSettled(now: 10_000 * ms), "not connected: never caught up")
        replay.restarted(true, now: 1_000 * ms)
        #expect(!replay.isSettled(now: 1_200 * ms))
        replay.delivered(now: 1_250 * ms)
        #expect(!replay.isSettled(now: 1_400 * ms), "a message came 150 ms ago")
        #expect(replay.isSettled(now: 1_550 * ms))
        // Each connection replays from the start again.
        replay.restarted(false, now: 2_000 * ms)
        #expect(!replay.isSettled(now: 3_000 * ms))
        replay.restarted(true, now: 3_000 * ms)
        #expect(!replay.isSettled(now: 3_100 * ms) && replay.isSettled(now: 3_300 * ms))
    }

    @Test("with a marker, a replay is caught up when the marker comes back, however busy the log, and not before")
    func marker() {
        let ms: UInt64 = 1_000_000
        let replay = LogReplay(quietNanoseconds: 300 * ms)
        replay.restarted(true, marker: "m1", now: 1_000 * ms)
        #expect(!replay.isSettled(now: 5_000 * ms), "quiet does not count while a marker is on its way")
        replay.delivered(marker: "m0", now: 5_100 * ms)  // another worker's, or an earlier connection's
        #expect(!replay.isSettled(now: 5_200 * ms))
        replay.delivered(marker: "m1", now: 5_300 * ms)
        #expect(replay.isSettled(now: 5_300 * ms), "at once, without waiting for quiet")
        replay.delivered(now: 5_310 * ms)
        #expect(replay.isSettled(now: 5_320 * ms), "live messages after the marker change nothing")
        // A new connection expects its own marker.
        replay.restarted(true, marker: "m2", now: 6_000 * ms)
        replay.delivered(marker: "m1", now: 6_010 * ms)
        #expect(!replay.isSettled(now: 9_000 * ms))
        // A marker that could not be published: quiet again, as without one. A report about an
        // earlier connection's marker changes nothing.
        replay.markerLost("m1")
        #expect(!replay.isSettled(now: 9_000 * ms))
        replay.markerLost("m2")
        #expect(replay.isSettled(now: 9_000 * ms))
        let message = WireContract.cancelLogMarker("m3")
        #expect(message.mandatory && message.exchange == WireContract.cancelExchange.name)
        #expect(WireContract.cancelled(message.properties) == nil, "a marker cancels nothing")
        #expect(message.properties.headers[WireContract.Header.logMarker]?.stringValue == "m3")
    }

    @Test("waiting for a replay ends when it settles, when the condition holds, or at the limit")
    func awaitSettled() async {
        let replay = LogReplay(quietNanoseconds: 50_000_000)
        #expect(await replay.awaitSettled(limit: .milliseconds(100)) == false, "never connected")
        #expect(await replay.awaitSettled(limit: .seconds(5), until: { true }))
        replay.restarted(true)
        let start = ContinuousClock.now
        #expect(await replay.awaitSettled(limit: .seconds(5)))
        #expect(ContinuousClock.now - start >= .milliseconds(40))
    }
}

import GangwayAMQPCore
import Testing

@Suite("Connection recovery state machine")
struct ConnectionStateMachineTests {
    let backoff = ConnectionStateMachine.Backoff(initialMilliseconds: 100, maximumMilliseconds: 1_000, multiplier: 2)

    @Test("start connects; success opens session generation 1")
    func happyPath() {
        var m = ConnectionStateMachine(backoff: backoff)
        let check1 = m.start() == .connect
        #expect(check1)
        let check2 = m.start() == .none
        #expect(check2)
        let check3 = m.connectSucceeded() == .openSession(generation: 1)
        #expect(check3)
        #expect(m.isConnected)
    }

    @Test("failed connects back off exponentially up to the cap, with jitter between half and all of the step")
    func backoffGrows() {
        var m = ConnectionStateMachine(backoff: backoff)
        _ = m.start()
        var delays: [Int] = []
        for _ in 0..<6 {
            guard case .reconnect(let ms) = m.connectFailed(random: 1.0) else {
                Issue.record("expected reconnect")
                return
            }
            delays.append(ms)
            let check4 = m.backoffElapsed() == .connect
            #expect(check4)
        }
        #expect(delays == [100, 200, 400, 800, 1000, 1000])
        #expect(backoff.delay(attempt: 2, random: 0) == 200)
        #expect(backoff.delay(attempt: 2, random: 0.5) == 300)
    }

    @Test("losing an open connection fails in-flight work, backs off from the first step, and the next session is a new generation")
    func lostAndRecovered() {
        var m = ConnectionStateMachine(backoff: backoff)
        _ = m.start()
        _ = m.connectFailed(random: 1)
        _ = m.backoffElapsed()
        _ = m.connectFailed(random: 1)
        _ = m.backoffElapsed()
        let check5 = m.connectSucceeded() == .openSession(generation: 1)
        #expect(check5)
        let check6 = m.connectionLost(random: 0) == .failInFlightAndReconnect(afterMilliseconds: 50)
        #expect(check6)
        #expect(!m.isConnected)
        let check7 = m.backoffElapsed() == .connect
        #expect(check7)
        let check8 = m.connectSucceeded() == .openSession(generation: 2)
        #expect(check8)
    }

    @Test("sessions that fail to open in a row back off step by step; an opened session starts over")
    func sessionFailuresBackOff() {
        var m = ConnectionStateMachine(backoff: backoff)
        _ = m.start()
        var delays: [Int] = []
        for generation in 1...6 {
            let opened = m.connectSucceeded() == .openSession(generation: UInt64(generation))
            #expect(opened)
            guard case .failInFlightAndReconnect(let ms) = m.sessionFailed(random: 1) else {
                Issue.record("expected a reconnect after the failed session")
                return
            }
            delays.append(ms)
            #expect(!m.isConnected)
            let connect = m.backoffElapsed() == .connect
            #expect(connect)
        }
        #expect(delays == [100, 200, 400, 800, 1000, 1000])
        // A connect failure meanwhile keeps the pace it had reached.
        let paced = m.connectFailed(random: 1) == .reconnect(afterMilliseconds: 1000)
        #expect(paced)
        _ = m.backoffElapsed()
        // Once a session opens, a loss (and the next failed session) backs off from the first step.
        _ = m.connectSucceeded()
        m.sessionOpened()
        let lost = m.connectionLost(random: 1) == .failInFlightAndReconnect(afterMilliseconds: 100)
        #expect(lost)
        _ = m.backoffElapsed()
        _ = m.connectSucceeded()
        let failed = m.sessionFailed(random: 1) == .failInFlightAndReconnect(afterMilliseconds: 100)
        #expect(failed)
        // Out of place: no connection, no session to fail.
        let ignored = m.sessionFailed(random: 1) == .none
        #expect(ignored)
    }

    @Test("events that do not fit the state are ignored")
    func outOfPlaceEvents() {
        var m = ConnectionStateMachine(backoff: backoff)
        let check9 = m.connectSucceeded() == .none
        #expect(check9)
        let check10 = m.connectionLost(random: 0) == .none
        #expect(check10)
        let check11 = m.backoffElapsed() == .none
        #expect(check11)
        _ = m.start()
        let check12 = m.connectionLost(random: 0) == .none
        #expect(check12)
        let check13 = m.backoffElapsed() == .none
        #expect(check13)
    }

    @Test("shutdown closes from any state, once")
    func shutdown() {
        var m = ConnectionStateMachine(backoff: backoff)
        _ = m.start()
        _ = m.connectSucceeded()
        let check14 = m.shutdown() == .close
        #expect(check14)
        let check15 = m.shutdown() == .none
        #expect(check15)
        let check16 = m.connectionLost(random: 0) == .none
        #expect(check16)
        let check17 = m.start() == .none
        #expect(check17)
    }
}

/// Publisher-confirm bookkeeping for one channel in confirm mode, as frames arrive.
///
/// rabbitmq-c 0.11 has no confirm-wait helper, so the connection owner feeds this machine the
/// basic.ack / basic.nack / basic.return frames it reads and gets back which publishes are now
/// settled. Delivery tags start at 1 after `confirm.select` and grow by one per publish; acks may
/// come out of order and may cover many tags at once (`multiple`). A mandatory message that
/// cannot be routed is returned *before* its ack, so a return marks the pending entry and the
/// following ack settles it as ``PublishOutcome/returned(replyCode:replyText:)``.
///
/// Returns carry no delivery tag; they are matched by `message_id`, which every mandatory
/// publish must carry.
///
/// Its code is inlinable so that the connection's thread runs it specialized for its token type,
/// without generic metadata lookups on every confirm.
public struct ConfirmTracker<Token: Sendable>: Sendable {
    @usableFromInline
    struct Entry: Sendable {
        @usableFromInline var token: Token?
        @usableFromInline var messageID: String?
        @usableFromInline var returned: (code: UInt16, text: String)?

        @inlinable
        init(token: Token?, messageID: String?, returned: (code: UInt16, text: String)?) {
            self.token = token
            self.messageID = messageID
            self.returned = returned
        }
    }

    /// Entries for tags `headTag ..< nextTag`, oldest first; settled entries have no token.
    @usableFromInline var entries: [Entry] = []
    @usableFromInline var headIndex = 0
    @usableFromInline var headTag: UInt64 = 1
    @usableFromInline var nextTag: UInt64 = 1
    @usableFromInline var tagByMessageID: [String: UInt64] = [:]

    @inlinable
    public init() {}

    /// Publishes awaiting their confirm.
    @inlinable
    public var pendingCount: Int { entries[headIndex...].reduce(0) { $0 + ($1.token == nil ? 0 : 1) } }

    /// Records a publish and returns the delivery tag the broker will confirm it under.
    @inlinable
    public mutating func published(_ token: Token, messageID: String?) -> UInt64 {
        let tag = nextTag
        nextTag += 1
        entries.append(Entry(token: token, messageID: messageID, returned: nil))
        if let messageID { tagByMessageID[messageID] = tag }
        return tag
    }

    /// Records a basic.return. Unknown message ids are ignored (the publish may have been
    /// settled already by a reset). Returns whether an entry was marked.
    @inlinable @discardableResult
    public mutating func returned(messageID: String?, replyCode: UInt16, replyText: String) -> Bool {
        guard let messageID, let tag = tagByMessageID[messageID], let index = index(of: tag) else { return false }
        entries[index].returned = (replyCode, replyText)
        return true
    }

    /// Settles the publishes a basic.ack covers.
    @inlinable
    public mutating func acked(deliveryTag: UInt64, multiple: Bool) -> [(Token, PublishOutcome)] {
        settle(deliveryTag: deliveryTag, multiple: multiple) { entry in
            if let r = entry.returned { return .returned(replyCode: r.code, replyText: r.text) }
            return .confirmed
        }
    }

    /// Settles the publishes a basic.nack covers.
    @inlinable
    public mutating func nacked(deliveryTag: UInt64, multiple: Bool) -> [(Token, PublishOutcome)] {
        settle(deliveryTag: deliveryTag, multiple: multiple) { _ in .nacked }
    }

    /// Forgets every pending publish (the channel or connection is gone) and restarts tags at 1,
    /// as a fresh `confirm.select` does. Returns the tokens that must now fail.
    @inlinable
    public mutating func reset() -> [Token] {
        let tokens = entries[headIndex...].compactMap(\.token)
        entries.removeAll(keepingCapacity: true)
        headIndex = 0
        headTag = 1
        nextTag = 1
        tagByMessageID.removeAll(keepingCapacity: true)
        return tokens
    }

    @usableFromInline
    func index(of tag: UInt64) -> Int? {
        guard tag >= headTag, tag < nextTag else { return nil }
        return headIndex + Int(tag - headTag)
    }

    @inlinable
    mutating func settle(
        deliveryTag: UInt64,
        multiple: Bool,
        outcome: (Entry) -> PublishOutcome
    ) -> [(Token, PublishOutcome)] {
        var settled: [(Token, PublishOutcome)] = []
        let lower = multiple ? headTag : deliveryTag
        let upper = min(deliveryTag, nextTag &- 1)
        if lower <= upper {
            for tag in lower...upper {
                guard let i = index(of: tag), let token = entries[i].token else { continue }
                settled.append((token, outcome(entries[i])))
                entries[i].token = nil
                if let id = entries[i].messageID { tagByMessageID[id] = nil }
            }
        }
        // Drop the settled prefix; compact now and then so the array does not grow forever.
        while headIndex < entries.count, entries[headIndex].token == nil {
            headIndex += 1
            headTag += 1
        }
        if headIndex > 1024, headIndex * 2 > entries.count {
            entries.removeFirst(headIndex)
            headIndex = 0
        }
        return settled
    }
}

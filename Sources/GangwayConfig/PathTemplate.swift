/// A route path such as `/v1/users/{id}/orders`: literal segments and named parameters.
public struct PathTemplate: Sendable, Hashable, CustomStringConvertible {
    public enum Segment: Sendable, Hashable {
        case literal(String)
        case parameter(String)
    }

    public let segments: [Segment]
    public let description: String

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// Parses a template; parameters must fill a whole segment and be named like identifiers.
    public init(_ text: String) throws(ParseError) {
        guard text.hasPrefix("/") else { throw ParseError(description: "path '\(text)' must start with '/'") }
        var segments: [Segment] = []
        var names: Set<String> = []
        for raw in text.split(separator: "/", omittingEmptySubsequences: false).dropFirst() {
            if raw.isEmpty {
                // A trailing slash is only allowed on the root.
                if text == "/" { break }
                throw ParseError(description: "path '\(text)' has an empty segment (double or trailing '/')")
            }
            if raw.hasPrefix("{") || raw.hasSuffix("}") || raw.contains("{") || raw.contains("}") {
                guard raw.hasPrefix("{"), raw.hasSuffix("}"), raw.count > 2 else {
                    throw ParseError(description: "segment '\(raw)' of '\(text)': a parameter must be a whole segment like {id}")
                }
                let name = String(raw.dropFirst().dropLast())
                guard Self.isIdentifier(name) else {
                    throw ParseError(description: "parameter name '\(name)' in '\(text)' must be letters, digits and '_', not starting with a digit")
                }
                guard names.insert(name).inserted else {
                    throw ParseError(description: "parameter '{\(name)}' appears twice in '\(text)'")
                }
                segments.append(.parameter(name))
            } else {
                segments.append(.literal(String(raw)))
            }
        }
        self.segments = segments
        self.description = text
    }

    public var parameterNames: [String] {
        segments.compactMap { if case .parameter(let n) = $0 { return n } else { return nil } }
    }

    static func isIdentifier(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, first == "_" || first.isASCIILetter else { return false }
        return s.unicodeScalars.allSatisfy { $0 == "_" || $0.isASCIILetter || ("0"..."9").contains($0) }
    }
}

/// A routing key with `{param}` placeholders filled from the path, e.g. `users.{id}.get`.
public struct KeyTemplate: Sendable, Hashable, CustomStringConvertible {
    enum Piece: Sendable, Hashable {
        case text(String)
        case parameter(String)
    }

    let pieces: [Piece]
    public let description: String

    /// - Parameters:
    ///   - opener: what starts a placeholder: `{` in routing keys (`users.{id}`), `${` in body
    ///     templates, where JSON's own braces must stay literal (`{"owner": "${owner}"}`).
    public init(_ text: String, opener: String = "{") throws(PathTemplate.ParseError) {
        var pieces: [Piece] = []
        var rest = text[...]
        while let open = rest.firstRange(of: opener) {
            if open.lowerBound > rest.startIndex { pieces.append(.text(String(rest[..<open.lowerBound]))) }
            guard let close = rest[open.upperBound...].firstIndex(of: "}") else {
                throw PathTemplate.ParseError(description: "unclosed '\(opener)' in '\(text)'")
            }
            let name = String(rest[open.upperBound..<close])
            guard PathTemplate.isIdentifier(name) else {
                throw PathTemplate.ParseError(description: "parameter name '\(name)' in '\(text)' must be letters, digits and '_'")
            }
            pieces.append(.parameter(name))
            rest = rest[rest.index(after: close)...]
        }
        if opener == "{" && rest.contains("}") { throw PathTemplate.ParseError(description: "unmatched '}' in '\(text)'") }
        if !rest.isEmpty { pieces.append(.text(String(rest))) }
        self.pieces = pieces
        self.description = text
    }

    public var parameterNames: [String] {
        pieces.compactMap { if case .parameter(let n) = $0 { return n } else { return nil } }
    }

    public var isConstant: Bool { parameterNames.isEmpty }

    /// Fills in the parameters, each passed through `escape` (e.g. JSON escaping for a body).
    public func render(_ parameters: [String: String], escape: (String) -> String) -> String {
        var out = ""
        for piece in pieces {
            switch piece {
            case .text(let t): out += t
            case .parameter(let n): out += escape(parameters[n] ?? "")
            }
        }
        return out
    }

    /// Fills in the parameters. Values were checked by the route table to hold no routing
    /// wildcards or separators.
    public func render(_ parameters: [String: String]) -> String {
        if case .text(let t)? = pieces.first, pieces.count == 1 { return t }
        var out = ""
        for piece in pieces {
            switch piece {
            case .text(let t): out += t
            case .parameter(let n): out += parameters[n] ?? ""
            }
        }
        return out
    }
}

extension Unicode.Scalar {
    var isASCIILetter: Bool { ("a"..."z").contains(self) || ("A"..."Z").contains(self) }
}

/// Parsing of the human-friendly quantities the route file accepts.
enum Quantities {
    /// `250ms`, `5s`, `2m`, or a bare number of milliseconds.
    static func milliseconds(_ text: String) -> Int? {
        let t = text.trimmingCharacters(in: " ")
        let units: [(String, Int)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
        for (suffix, factor) in units where t.hasSuffix(suffix) {
            let number = t.dropLast(suffix.count).trimmingCharacters(in: " ")
            if let v = Int(number), v >= 0 { return v.multipliedReportingOverflow(by: factor).overflow ? nil : v * factor }
            if let d = Double(number), d >= 0, d.isFinite, d * Double(factor) < Double(Int.max) { return Int(d * Double(factor)) }
            return nil
        }
        if let v = Int(t), v >= 0 { return v }
        return nil
    }

    /// `512`, `64KiB`, `1MiB`, `10kB`, `2MB`: bytes.
    static func bytes(_ text: String) -> Int? {
        let t = text.trimmingCharacters(in: " ")
        let units: [(String, Int)] = [
            ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30),
            ("kB", 1000), ("KB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("B", 1),
        ]
        for (suffix, factor) in units where t.hasSuffix(suffix) {
            let number = t.dropLast(suffix.count).trimmingCharacters(in: " ")
            guard let v = Int(number), v >= 0 else { return nil }
            let (r, o) = v.multipliedReportingOverflow(by: factor)
            return o ? nil : r
        }
        if let v = Int(t), v >= 0 { return v }
        return nil
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: Character) -> String {
        var s = self[...]
        while s.first == set { s.removeFirst() }
        while s.last == set { s.removeLast() }
        return String(s)
    }
}

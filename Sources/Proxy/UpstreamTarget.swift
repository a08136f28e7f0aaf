public import Config
public import HTTP
public import Loop

/// An upstream as the data path uses it: resolved address and its gate.
public final class UpstreamTarget: Sendable {
    public let name: String
    public let config: Upstream
    public let address: ResolvedAddress
    public let pathPrefix: [UInt8]
    public let gate: any ConcurrencyGate
    /// `gate.withdraw`, made once: queued jobs keep it with their token.
    public let withdraw: @Sendable (UInt64) -> Void

    init(config: Upstream, address: ResolvedAddress, gate: any ConcurrencyGate) {
        self.name = config.name
        self.config = config
        self.address = address
        self.gate = gate
        self.withdraw = { token in gate.withdraw(token) }
        self.pathPrefix = Array(config.url.pathPrefix.utf8)
    }
}

public import Config
public import HTTP
import Loop
import Meters

/// An upstream as the data path uses it: resolved address and its gate.
public final class UpstreamTarget: Sendable {
    public let name: String
    public let config: Upstream
    public let address: ResolvedAddress
    public let pathPrefix: [UInt8]
    public let gate: any ConcurrencyGate
    /// For an `https://` upstream: its trust store and verification; nil for `http://`.
    public let tls: TLSClientContext?
    /// Made by a layer above for a peer that is not one of the configured
    /// upstreams (a webhook receiver): pooled on each loop like them, for as
    /// long as the configuration lasts.
    public let isStandalone: Bool
    /// `gate.withdraw`, made once: queued jobs keep it with their token.
    public let withdraw: @Sendable (UInt64) -> Void
    /// The name's slot in the meter tables; `MeterLabels.uncounted` for a
    /// standalone target (receivers are URLs: not a bounded label).
    public let meterSlot: Int

    convenience init(config: Upstream, address: ResolvedAddress, gate: any ConcurrencyGate, tls: TLSClientContext?) {
        self.init(config, address, gate, tls, standalone: false)
    }

    /// A standalone target: `config` names the peer and its timeouts;
    /// `gate` bounds the exchanges in flight to it.
    public convenience init(standalone config: Upstream, address: ResolvedAddress, gate: any ConcurrencyGate,
                            tls: TLSClientContext?) {
        self.init(config, address, gate, tls, standalone: true)
    }

    private init(_ config: Upstream, _ address: ResolvedAddress, _ gate: any ConcurrencyGate, _ tls: TLSClientContext?,
                 standalone: Bool) {
        self.name = config.name
        self.config = config
        self.address = address
        self.gate = gate
        self.tls = tls
        self.isStandalone = standalone
        self.meterSlot = standalone ? MeterLabels.uncounted : MeterLabels.slot(upstream: config.name)
        self.withdraw = { token in gate.withdraw(token) }
        self.pathPrefix = Array(config.url.pathPrefix.utf8)
    }
}

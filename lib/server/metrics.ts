/**
 * Prometheus metrics of the synthesis server, fed only by the core's
 * diagnostics channels (the core never calls a metric). Owns one prom-client
 * registry: first-response and resume time, blocked-read waits, segment
 * bytes by lane, demand and out-of-order fetches, the cloudlet store (lookups
 * and hit ratio, bytes saved, added, evictions, dropped entries), sessions (active, ended by
 * outcome), refused connections by code, and Node's default process metrics,
 * event-loop lag among them.
 */
import client from 'prom-client';
import { channels, type ChannelName } from '../core/diagnostics.js';

/** Seconds: from a local resume (~0.1 s on KVM) to a slow link's baseline (minutes). */
const TIME_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300];
/** Seconds a held guest read waited: one segment on a fast link is milliseconds. */
const WAIT_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10];

export class ServerMetrics {
  readonly registry = new client.Registry();
  private readonly unsubscribers: (() => void)[] = [];

  constructor() {
    const r = [this.registry];
    client.collectDefaultMetrics({ register: this.registry, prefix: 'vmsynth_', eventLoopMonitoringPrecision: 20 });
    const firstResponse = new client.Histogram({
      name: 'vmsynth_first_response_seconds',
      help: "From session start (manifest accepted) to the app's first answer",
      labelNames: ['policy'],
      buckets: TIME_BUCKETS,
      registers: r,
    });
    const resumed = new client.Histogram({
      name: 'vmsynth_resume_seconds',
      help: 'From session start to the VM running',
      labelNames: ['policy'],
      buckets: TIME_BUCKETS,
      registers: r,
    });
    const blocked = new client.Histogram({
      name: 'vmsynth_blocked_read_seconds',
      help: 'How long guest reads of chunks not yet arrived were held',
      buckets: WAIT_BUCKETS,
      registers: r,
    });
    const segmentBytes = new client.Counter({
      name: 'vmsynth_segment_bytes_total',
      help: 'Overlay segment bytes received and applied, by lane',
      labelNames: ['lane'],
      registers: r,
    });
    const segments = new client.Counter({
      name: 'vmsynth_segments_total',
      help: 'Overlay segments received and applied, by lane',
      labelNames: ['lane'],
      registers: r,
    });
    const demand = new client.Counter({
      name: 'vmsynth_demand_fetches_total',
      help: 'Segments a guest read put on the demand lane',
      registers: r,
    });
    const outOfOrder = new client.Counter({
      name: 'vmsynth_out_of_order_fetches_total',
      help: 'Guest reads of a segment already on its way in the background (the access order was wrong for it)',
      registers: r,
    });
    const active = new client.Gauge({ name: 'vmsynth_active_sessions', help: 'Sessions running now', registers: r });
    const ended = new client.Counter({
      name: 'vmsynth_sessions_total',
      help: 'Sessions ended, by outcome (ok or an error code)',
      labelNames: ['outcome'],
      registers: r,
    });
    const refused = new client.Counter({
      name: 'vmsynth_connections_refused_total',
      help: 'Connections refused or failed before a session started, by error code',
      labelNames: ['code'],
      registers: r,
    });
    const vmDied = new client.Counter({
      name: 'vmsynth_vm_deaths_total',
      help: 'Session VMs that died while their session ran',
      registers: r,
    });
    const badBases = new client.Gauge({
      name: 'vmsynth_bases_failed_verification',
      help: 'Local bases whose files did not match their manifest at start',
      registers: r,
    });
    const storeLookups = new client.Counter({
      name: 'vmsynth_store_lookups_total',
      help: 'Segments sessions looked for in the cloudlet store: hit (taken from it) or miss (asked of the client)',
      labelNames: ['result'],
      registers: r,
    });
    const storeHitRatio = new client.Gauge({
      name: 'vmsynth_store_hit_ratio',
      help: 'Store hits / lookups since this server started (NaN before the first lookup)',
      registers: r,
    });
    const storeSaved = new client.Counter({
      name: 'vmsynth_store_bytes_saved_total',
      help: 'Segment bytes taken from the cloudlet store instead of over a client link',
      registers: r,
    });
    const chunkHits = new client.Counter({
      name: 'vmsynth_store_chunk_hits_total',
      help: 'Chunk lookaside: payload chunks taken from stored segments of other overlays instead of over a client link',
      registers: r,
    });
    const chunkSaved = new client.Counter({
      name: 'vmsynth_store_chunk_bytes_saved_total',
      help: 'Chunk lookaside: payload bytes (uncompressed) taken from stored segments instead of over a client link',
      registers: r,
    });
    const storeAdded = new client.Counter({
      name: 'vmsynth_store_added_bytes_total',
      help: 'Segment bytes that entered the cloudlet store',
      registers: r,
    });
    const storeEvictions = new client.Counter({
      name: 'vmsynth_store_evictions_total',
      help: 'Segments the cloudlet store evicted to stay under its cap',
      registers: r,
    });
    const storeDropped = new client.Counter({
      name: 'vmsynth_store_dropped_total',
      help: 'Store entries dropped because they failed their check or their file was gone, by reason',
      labelNames: ['reason'],
      registers: r,
    });
    const objectBytes = new client.Counter({
      name: 'vmsynth_object_store_bytes_total',
      help: 'Segment bytes fetched from an object store the client named, over the server link, and applied',
      registers: r,
    });
    const objectFallbacks = new client.Counter({
      name: 'vmsynth_object_store_fallbacks_total',
      help: 'Sessions whose object store failed or was refused, by reason; their client sent the rest',
      labelNames: ['reason'],
      registers: r,
    });
    const objectHedges = new client.Counter({
      name: 'vmsynth_object_store_hedges_total',
      help: 'Guest reads that waited on the object store past the hedge delay; their segment was asked of the client too',
      registers: r,
    });
    active.set(0);
    badBases.set(0);
    storeHitRatio.set(NaN);
    let hits = 0;
    let misses = 0;
    const lookup = (hit: number, miss: number) => {
      hits += hit;
      misses += miss;
      if (hit) storeLookups.inc({ result: 'hit' }, hit);
      if (miss) storeLookups.inc({ result: 'miss' }, miss);
      storeHitRatio.set(hits / (hits + misses));
    };

    const on = (name: ChannelName, f: (m: Record<string, unknown>) => void) => {
      const handler = (message: unknown) => f((message ?? {}) as Record<string, unknown>);
      channels[name].subscribe(handler);
      this.unsubscribers.push(() => channels[name].unsubscribe(handler));
    };
    const code = (e: unknown) => (e && typeof e === 'object' && 'code' in e ? String(e.code) : 'VMS_INTERNAL');
    on('firstResponse', (m) => firstResponse.observe({ policy: String(m.policy) }, Number(m.ms) / 1000));
    on('sessionResumed', (m) => resumed.observe({ policy: String(m.policy) }, Number(m.ms) / 1000));
    on('readUnblocked', (m) => blocked.observe(Number(m.ms) / 1000));
    on('segmentApplied', (m) => {
      if (m.from === 'store') return; // counted as bytes saved
      if (m.from === 'object') return void objectBytes.inc(Number(m.bytes));
      segmentBytes.inc({ lane: String(m.lane) }, Number(m.bytes));
      segments.inc({ lane: String(m.lane) });
    });
    on('demandFetch', (m) => (m.outOfOrder ? outOfOrder.inc() : demand.inc()));
    on('sessionStarted', () => active.inc());
    on('sessionEnded', (m) => {
      active.dec();
      ended.inc({ outcome: m.error ? code(m.error) : 'ok' });
    });
    on('connectionRefused', (m) => refused.inc({ code: String(m.code) }));
    on('vmDied', () => vmDied.inc());
    on('storeHit', (m) => {
      lookup(1, 0);
      storeSaved.inc(Number(m.bytes));
    });
    on('storeMiss', (m) => lookup(0, Number(m.segments)));
    on('storeChunkHit', (m) => {
      chunkHits.inc(Number(m.chunks));
      chunkSaved.inc(Number(m.bytes));
    });
    on('storeAdded', (m) => storeAdded.inc(Number(m.bytes)));
    on('storeEvicted', () => storeEvictions.inc());
    on('storeDropped', (m) => storeDropped.inc({ reason: String(m.reason) }));
    on('objectStoreFallback', (m) => objectFallbacks.inc({ reason: String(m.reason) }));
    on('objectStoreHedge', () => objectHedges.inc());
    on('baseChecked', (m) => {
      if (m.ok === false) badBases.inc();
    });
  }

  /** The exposition text for /metrics. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  close(): void {
    this.unsubscribers.forEach((u) => u());
    this.registry.clear();
  }
}

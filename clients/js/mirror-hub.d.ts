// Types of mirror-hub.js: the Mirror Hub wire protocol client (docs/protocol.md): version 1 for
// mirrors, 2 (frames in batches) for watchers unless they ask for 1.

export declare const PROTOCOL: 1;

export interface CloseCodeInfo {
  readonly name: string;
  /** Whether a client backs off, reconnects and resumes after this code. */
  readonly reconnect: boolean;
}

/** Every close code the hub sends. Codes not listed (1006: the network dropped) mean reconnect. */
export declare const CLOSE_CODES: Readonly<Record<number, CloseCodeInfo>>;

export declare function shouldReconnect(code: number): boolean;

/** http(s):// or ws(s):// base URL plus a path → a WebSocket URL. */
export declare function wsUrl(base: string, path: string): string;

/** Bad use of the client, or a connection closed for good (`code` is then the close code). */
export declare class MirrorHubError extends Error {
  constructor(message: string, code?: number | null, reason?: string);
  readonly code: number | null;
  readonly reason: string;
}

export type Metrics = Record<string, number>;
export type TaskEvent = "started" | "status" | "finished";
export type TaskStatus = "pending" | "in_progress" | "success" | "failed" | "skipped";

/** A metrics frame as the application gives it to send(); the client adds `seq`. */
export interface MetricsFrameInput {
  type: "metrics";
  /** Device time in Unix seconds; default: now. */
  ts?: number;
  values: Metrics;
  task_id?: string;
}

export interface TaskFrameInput {
  type: "task";
  ts?: number;
  task_id: string;
  task_name: string;
  event: TaskEvent;
  status: TaskStatus;
  duration_seconds?: number;
  metrics?: Metrics;
}

export type FrameInput = MetricsFrameInput | TaskFrameInput;

/** A frame as it travels: what the mirror sent, with its seq. */
export type Frame = (MetricsFrameInput | TaskFrameInput) & { seq: number; ts: number };

/** Throws MirrorHubError unless the frame keeps the protocol's rules; returns it with `ts`. */
export declare function validateFrame<F extends FrameInput>(frame: F): F & { ts: number };

export type ConnectionState = "idle" | "connecting" | "open" | "backoff" | "offline" | "ended" | "closed";

export interface TokenExpiredInfo {
  /** The hub's close reason, e.g. "token expired". */
  reason: string;
  sessionId: string;
}

export interface ConnectionOptions {
  /** The hub's base URL: ws://host:port, wss://…, http(s)://… The client adds the path. */
  url: string;
  sessionId: string;
  token?: string | null;
  /** A WebSocket constructor; default globalThis.WebSocket. */
  WebSocket?: new (url: string) => WebSocket;
  /** On close 1008 (missing, expired or out-of-scope credential): a new token, or null to stop. */
  onTokenExpired?: (info: TokenExpiredInfo) => string | null | undefined | Promise<string | null | undefined>;
  /** First reconnect delay cap in ms (default 100); doubles per failed attempt, full jitter. */
  backoffInitialMs?: number;
  /** Largest reconnect delay cap in ms (default 5000). */
  backoffMaxMs?: number;
  /** Time for the hub's `welcome` before the attempt is given up (default 10000). */
  handshakeTimeoutMs?: number;
}

export interface MirrorClientOptions extends ConnectionOptions {
  /** "memory" (default), or "indexeddb": unacked frames and the seq counter survive a reload. */
  store?: "memory" | "indexeddb";
  /** The bound of the outbox of unacked frames (default 20,000); then send() returns false. */
  maxUnacked?: number;
  /** With frames unanswered and nothing heard for this long, the socket is dropped (default 10000). */
  staleMs?: number;
  /** Frames queued within this many ms share one message (default 10). */
  minMessageIntervalMs?: number;
}

export interface WatcherClientOptions extends ConnectionOptions {
  /** Replay frames after this seq (0: the whole session); default: start from a snapshot. */
  since?: number | null;
  /** 2 (default): the hub sends frames in batches, shown one by one all the same; 1: one per message. */
  protocol?: 1 | 2;
  /** Protocol 2: how long the hub may hold a frame to batch it with the next (default 0; the hub caps it). */
  maxDelayMs?: number;
}

export interface Welcome {
  type: "welcome";
  session_id: string;
  role: "mirror" | "watcher";
  last_seq: number;
  acked_seq: number;
  max_message_bytes: number;
  max_batch: number;
  protocol: number;
  node?: string;
  /** Protocol 2 watchers: the batching delay in effect. */
  max_delay_ms?: number;
}

export interface Presence {
  type: "presence";
  mirror: "connected" | "disconnected";
  watchers: number;
}

export interface Snapshot {
  type: "snapshot";
  session: Record<string, unknown>;
  tasks: Array<Record<string, unknown>>;
  latest: Metrics;
  presence: Presence;
  last_seq: number;
  ended: boolean;
}

export interface CloseDetail {
  code: number;
  reason: string;
  /** Whether the client reconnects after it. */
  reconnect: boolean;
}

export interface ErrorDetail {
  /** The close code when the client stopped for good; null for an `error` message of the hub. */
  code: number | null;
  reason: string;
  message: string;
  hub?: Record<string, unknown>;
}

interface ConnectionEvents {
  state: { state: ConnectionState };
  welcome: Welcome;
  close: CloseDetail;
  error: ErrorDetail;
}

export interface MirrorClientEvents extends ConnectionEvents {
  ack: { seq: number; unacked: number };
  /** The outbox has room again after send() returned false. */
  drain: { unacked: number };
  /** Frames first..last went on the wire (resends included). */
  sent: { first: number; last: number };
  ended: { lastSeq: number };
}

export interface WatcherClientEvents extends ConnectionEvents {
  snapshot: Snapshot;
  /** A metrics or task frame: each seq once, in order. */
  frame: Frame;
  presence: Presence;
  ended: { lastSeq: number };
}

declare class Connection<Events> extends EventTarget {
  readonly sessionId: string;
  readonly url: string;
  readonly state: ConnectionState;
  /** True once the client stopped for good (state "ended" or "closed"). */
  readonly stopped: boolean;
  /** Set once the client stopped for good. */
  readonly closeCode: number | null;
  readonly closeReason: string;
  /** Reconnections so far (welcomes after the first). */
  readonly reconnects: number;
  addEventListener<K extends keyof Events>(
    type: K,
    listener: (event: CustomEvent<Events[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof Events>(
    type: K,
    listener: (event: CustomEvent<Events[K]>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

export declare class MirrorClient extends Connection<MirrorClientEvents> {
  constructor(options: MirrorClientOptions);
  /** Frames given a seq and not yet acked. */
  readonly unacked: number;
  /** Highest seq given. */
  readonly lastSeq: number;
  /** Every frame up to this seq is committed in the hub's database. */
  readonly ackedSeq: number;
  /** Whether send() would take a frame now. */
  readonly writable: boolean;
  /** Frames put on the wire, resends included. */
  readonly framesWritten: number;
  /** Loads what the store kept, then connects. Await it before send(). */
  start(): Promise<void>;
  /**
   * Validates the frame (throws MirrorHubError if it breaks the protocol's rules), gives it the
   * next seq and returns it; or returns false when maxUnacked frames wait for acks (nothing is
   * taken: send it again after the `drain` event).
   */
  send(frame: FrameInput): number | false;
  /** Resolves when every frame sent so far is acked; rejects if the client stops for good. */
  flush(): Promise<void>;
  /** Waits for every ack, sends `end`, resolves with the last seq once the hub ended the session. */
  end(): Promise<number>;
  /** Stops for good; unacked frames stay in the store. */
  close(): void;
}

export declare class WatcherClient extends Connection<WatcherClientEvents> {
  constructor(options: WatcherClientOptions);
  /** The protocol version this watcher speaks. */
  readonly protocol: 1 | 2;
  /** The most it asks the hub to hold a frame for batching. */
  readonly maxDelayMs: number;
  /** The last seq shown to the application (null before a snapshot). */
  readonly lastSeq: number | null;
  /** Gaps seen on the wire, each repaired by a resume and never shown. */
  readonly gaps: number;
  /** Frames dropped because their seq was already shown. */
  readonly duplicates: number;
  readonly ended: boolean;
  start(): void;
  close(): void;
}

export {};

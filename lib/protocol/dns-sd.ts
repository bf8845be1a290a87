/**
 * How vmsynth cloudlets appear in DNS-SD (mDNS): the service type, and the
 * multicast-dns options that keep the traffic on one interface.
 */

/** The DNS-SD service type `_vmsynth._tcp`, as bonjour-service names it (it adds the underscore and protocol). */
export const SERVICE_TYPE = 'vmsynth';

/**
 * multicast-dns options: group membership and sends on the interface with
 * address `iface`, the socket bound to the wildcard (a socket bound to a
 * unicast address hears no multicast). null: the system's default interface.
 */
export function mdnsOptions(iface: string | null): Record<string, unknown> {
  return iface ? { interface: iface, bind: '0.0.0.0' } : {};
}

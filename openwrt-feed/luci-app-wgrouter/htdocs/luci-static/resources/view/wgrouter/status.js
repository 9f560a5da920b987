'use strict';
'require view';
'require rpc';
'require poll';
'require ui';
'require dom';

/* Status of wgrouter: one row per WireGuard peer, the WANs, recent events,
 * the diagnosis, and the two actions: re-apply, switch WAN.
 *
 * The calls go to luci.wgrouter, not wgrouter: uhttpd adds ubus_rpc_session
 * to the arguments of every call it forwards, and the daemon's luci.wgrouter
 * object declares it (python3-ubus refuses undeclared arguments).  Every
 * call rejects on a ubus error (reject: true), so that a refused or failed
 * call is shown as an error and never as an empty page or a false success. */

var callStatus = rpc.declare({
	object: 'luci.wgrouter',
	method: 'status',
	expect: { '': {} },
	reject: true
});

var callReapply = rpc.declare({
	object: 'luci.wgrouter',
	method: 'reapply',
	expect: { '': {} },
	reject: true
});

var callSwitch = rpc.declare({
	object: 'luci.wgrouter',
	method: 'switch',
	params: [ 'wan' ],
	expect: { '': {} },
	reject: true
});

var callDiagnose = rpc.declare({
	object: 'luci.wgrouter',
	method: 'diagnose',
	expect: { '': {} },
	reject: true
});

/* seconds between refreshes of the page */
var POLL_INTERVAL = 5;

/* What went wrong, in words: rpc.js's errors name ubus status codes and
 * uhttpd's JSON-RPC error codes, and may carry a stack trace after the
 * first line; neither is for a router owner's eyes. */
function describe(err) {
	var msg = String((err && err.message) || err || '');
	var m = /failed with ubus code (\d+)/.exec(msg);

	if (m) {
		switch (+m[1]) {
		case 2:
			return _('wgrouter refused the request: the page and the daemon do not match. Update wgrouter and luci-app-wgrouter to the same version.');
		case 3:
			return _('This version of wgrouter does not know this request. Update wgrouter.');
		case 4:
			return _('wgrouter is not running, or not connected to ubus.');
		case 6:
			return _('You are not allowed to do this.');
		case 7:
			return _('wgrouter did not answer in time. Try again in a moment.');
		case 10:
			return _('The connection to ubus was lost. Try again in a moment.');
		default:
			return _('wgrouter could not answer (ubus error %d).').format(+m[1]);
		}
	}

	m = /failed with error (-?\d+)/.exec(msg);
	if (m) {
		switch (+m[1]) {
		case -32000:
			return _('wgrouter is not running, or it runs without python3-ubus. Start it with "/etc/init.d/wgrouter start".');
		case -32001:
			return _('Your session has expired. Log in again.');
		case -32002:
			return _('You are not allowed to do this: your login has read-only access to wgrouter.');
		case -32003:
			return _('wgrouter did not answer in time. Try again in a moment.');
		default:
			return _('The router refused the request (error %d).').format(+m[1]);
		}
	}

	if (/HTTP error|timed out|aborted/i.test(msg))
		return _('The router did not answer. Check the connection and reload the page.');

	return _('The request failed: %s').format(msg.split(/\n/)[0].replace(/^\w*Error: /, ''));
}

function age(seconds) {
	if (seconds == null)
		return _('never');
	seconds = Math.floor(seconds);
	if (seconds < 120)
		return _('%d s ago').format(seconds);
	if (seconds < 7200)
		return _('%d min ago').format(Math.floor(seconds / 60));
	return _('%d h ago').format(Math.floor(seconds / 3600));
}

function bytes(n) {
	return '%1024.2mB'.format(n || 0);
}

function yesno(flag) {
	return flag ? _('yes') : _('no');
}

function orDash(value) {
	return (value == null || value === '') ? '-' : String(value);
}

/* The WAN timeline: which WAN carried each tunnel over the last
 * TIMELINE_SPAN seconds, drawn from the status snapshot's events (the
 * daemon's ring of recent transitions), so it reaches back only as far as
 * the ring's oldest event; what lies before that is drawn as unknown. */
var TIMELINE_SPAN = 3600;
var TIMELINE_COLOURS = [ '#2f6fb5', '#e08a1e', '#6f4fb3', '#1f9e89', '#b5487e', '#7a8a1c' ];
var TIMELINE_DOWN = '#c9302c';
var TIMELINE_UNKNOWN = 'repeating-linear-gradient(135deg, #d5d8dd 0 4px, #eef0f3 4px 8px)';

/* A tunnel's own transitions (no peer): the WAN it left and the one it
 * took, "down" when none carried it.  The fields come with the events of
 * the daemon's snapshot; the text, which every transition has and words as
 * "TUNNEL: was WAS, now NOW, because ...", is read where they do not. */
function tunnelMoves(st) {
	var moves = {};

	(st.events || []).forEach(function(ev) {
		var tunnel = ev.tunnel, was = ev.was, now = ev.now, m;

		if (typeof tunnel != 'string') {
			m = /^(\S+): was (.*?), now (.*?), because /.exec(ev.text || '');
			if (!m)
				return;
			tunnel = m[1], was = m[2], now = m[3];
		}
		else if (ev.peer != null) {
			return;
		}
		if (!st.tunnels[tunnel] || typeof ev.time != 'number')
			return;
		(moves[tunnel] = moves[tunnel] || []).push({ time: ev.time, was: was, now: now });
	});
	Object.keys(moves).forEach(function(t) {
		moves[t].sort(function(a, b) { return a.time - b.time; });
	});
	return moves;
}

/* the WAN a tunnel is on now, from its peers (all take the tunnel's WAN) */
function currentWan(tunnel) {
	var peers = tunnel.peers || {}, wan = null;

	if (typeof tunnel.wan == 'string')
		return tunnel.wan;
	Object.keys(peers).forEach(function(k) { wan = wan || peers[k].wan; });
	return wan || 'down';
}

/* [{ from, to, what }] over [now - TIMELINE_SPAN, now] for each tunnel:
 * what is a WAN name, 'down', or null (not known) */
function timelines(st, now) {
	var start = now - TIMELINE_SPAN, moves = tunnelMoves(st), out = {};
	var reach = (st.events || []).reduce(function(t, ev) {
		return (typeof ev.time == 'number' && ev.time < t) ? ev.time : t;
	}, now);

	Object.keys(st.tunnels || {}).sort().forEach(function(name) {
		var list = moves[name] || [], segs = [], at = reach;
		var state = list.length ? list[0].was : currentWan(st.tunnels[name]);

		function known(what) {
			return (what == 'down' || (st.wans || {})[what]) ? what : null;
		}
		function add(from, to, what) {
			from = Math.max(from, start), to = Math.min(to, now);
			if (to <= from)
				return;
			var last = segs[segs.length - 1];
			if (last && last.what === what && last.to >= from)
				last.to = to;
			else
				segs.push({ from: from, to: to, what: what });
		}

		add(start, reach, null);
		list.forEach(function(mv) {
			add(at, mv.time, known(state));
			at = mv.time, state = mv.now;
		});
		add(at, now, known(state));
		out[name] = segs;
	});
	return out;
}

function clock(t) {
	var d = new Date(t * 1000);
	return '%02d:%02d'.format(d.getHours(), d.getMinutes());
}

function renderTimeline(st) {
	var now = (typeof st.time == 'number') ? st.time : Date.now() / 1000;
	var wans = Object.keys(st.wans || {}), rows = timelines(st, now);
	var colour = function(what) {
		if (what == null)
			return TIMELINE_UNKNOWN;
		if (what == 'down')
			return TIMELINE_DOWN;
		return TIMELINE_COLOURS[wans.indexOf(what) % TIMELINE_COLOURS.length];
	};
	var name = function(what) {
		return what == null ? _('not known (before the oldest event kept)') : (what == 'down' ? _('down') : what);
	};
	var names = Object.keys(rows);

	if (!names.length)
		return E('p', { 'class': 'wgrouter-timeline' }, _('No managed tunnel'));

	var legend = wans.concat([ 'down', null ]).map(function(what) {
		return E('span', { 'style': 'margin-right:14px;white-space:nowrap' }, [
			E('span', { 'style': 'display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px;' +
				'border-radius:2px;background:' + colour(what) }),
			what == null ? _('not known') : name(what)
		]);
	});

	return E('div', { 'class': 'wgrouter-timeline' }, names.map(function(tunnel) {
		return E('div', { 'class': 'wgrouter-timeline-row', 'data-tunnel': tunnel,
			'style': 'display:flex;align-items:center;margin:4px 0' }, [
			E('span', { 'style': 'flex:0 0 60px;font-weight:bold;overflow:hidden;text-overflow:ellipsis' }, tunnel),
			E('div', { 'class': 'wgrouter-timeline-bar', 'role': 'img',
				'aria-label': rows[tunnel].map(function(seg) {
					return '%s %s-%s'.format(name(seg.what), clock(seg.from), clock(seg.to));
				}).join(', '),
				'style': 'flex:1 1 auto;display:flex;height:18px;border-radius:3px;overflow:hidden;background:#eef0f3' },
				rows[tunnel].map(function(seg) {
					return E('div', {
						'class': 'wgrouter-timeline-seg',
						'data-what': seg.what == null ? '' : seg.what,
						'data-from': Math.round(seg.from - now),
						'data-to': Math.round(seg.to - now),
						'title': _('%s, %s to %s').format(name(seg.what), clock(seg.from), clock(seg.to)),
						'style': 'flex:0 0 %.3f%%;min-width:2px;background:%s'.format(
							100 * (seg.to - seg.from) / TIMELINE_SPAN, colour(seg.what))
					});
				}))
		]);
	}).concat([
		E('div', { 'style': 'display:flex;justify-content:space-between;margin-left:60px;color:#666;font-size:90%' }, [
			E('span', _('1 h ago')), E('span', _('30 min ago')), E('span', _('now'))
		]),
		E('div', { 'style': 'margin-top:6px;font-size:90%' }, legend)
	]));
}

/* LuCI's table: cbi_update_table() gives every cell the data-title of its
 * column, which the theme shows as the label when a narrow screen hides the
 * header row. */
function table(headers, rows, empty) {
	var t = E('table', { 'class': 'table' }, [
		E('tr', { 'class': 'tr table-titles' }, headers.map(function(h) {
			return E('th', { 'class': 'th' }, h);
		}))
	]);

	cbi_update_table(t, rows, E('em', empty));
	return t;
}

function notify(reply, done) {
	if (reply && reply.error)
		ui.addNotification(null, E('p', reply.error), 'danger');
	else if (reply && reply.ok)
		ui.addNotification(null, E('p', done), 'info');
	else
		ui.addNotification(null, E('p', _('wgrouter gave no answer.')), 'danger');
}

function failed(err) {
	ui.addNotification(null, E('p', describe(err)), 'danger');
}

return view.extend({
	load: function() {
		return callStatus().catch(function(err) {
			return { error: describe(err) };
		});
	},

	/* false for a login with read-only access to the page (LuCI marks the
	 * view so when the ACL grants read but not write) */
	writable: function() {
		return L.hasViewPermission() !== false;
	},

	peerRows: function(st) {
		var rows = [];

		Object.keys(st.tunnels || {}).sort().forEach(function(tunnel) {
			var peers = st.tunnels[tunnel].peers || {};

			/* peers are keyed by public key or label; show the label */
			Object.keys(peers).map(function(key) {
				return [ peers[key].label || key, peers[key] ];
			}).sort(function(a, b) {
				return a[0] < b[0] ? -1 : (a[0] > b[0] ? 1 : 0);
			}).forEach(function(item) {
				var label = item[0], p = item[1];

				rows.push([
					tunnel,
					label,
					orDash(p.state),
					orDash(p.wan),
					/* on the last rung the endpoint is the peer's TCP relay */
					p.transport == 'tcp-relay'
						? _('TCP relay %s (%s)').format(p.relay, orDash(p.endpoint))
						: orDash(p.endpoint),
					orDash(p.endpoint_source),
					p.keepalive ? _('%d s').format(p.keepalive) : _('off'),
					age(p.handshake_age),
					bytes(p.rx),
					bytes(p.tx),
					orDash(p.last_step)
				]);
			});
		});

		return rows;
	},

	/* the last cell: a "Use" button only where pressing it does something;
	 * the active WAN and a WAN that is down say so in words instead of
	 * showing a disabled button that looks like an enabled one */
	useCell: function(name, w) {
		if (w.active)
			return E('em', _('in use'));
		if (!w.up)
			return E('em', _('down'));
		return E('button', {
			'class': 'cbi-button cbi-button-action',
			'click': ui.createHandlerFn(this, 'handleSwitch', name)
		}, _('Use'));
	},

	wanRows: function(st, writable) {
		var wans = st.wans || {};

		return Object.keys(wans).map(function(name) {
			var w = wans[name];
			var row = [
				w.active ? E('strong', name) : name,
				yesno(w.up),
				yesno(w.healthy),
				(w.families && w.families.length)
					? w.families.map(function(f) { return f.replace('ip', 'IP'); }).join(' + ')
					: '-',
				yesno(w.active)
			];

			if (writable)
				row.push(this.useCell(name, w));

			return row;
		}, this);
	},

	renderBody: function(st) {
		if (st.error)
			return E('div', { 'class': 'alert-message warning' }, [
				E('p', _('No status from wgrouter: %s').format(st.error))
			]);

		var writable = this.writable();
		var events = (st.events || []).slice().reverse();
		var wanHeaders = [ _('WAN'), _('Up'), _('Healthy'), _('Carries'), _('Active') ];

		if (writable)
			wanHeaders.push(_('Switch'));

		return E('div', {}, [
			E('h3', _('Peers')),
			table([ _('Tunnel'), _('Peer'), _('State'), _('WAN'), _('Endpoint'), _('Source'),
				_('Keepalive'), _('Handshake'), _('Received'), _('Sent'), _('Last step') ],
				this.peerRows(st), _('No managed peers')),

			E('h3', _('WAN uplinks')),
			table(wanHeaders, this.wanRows(st, writable), _('No WAN configured')),

			E('h3', _('WAN of each tunnel, last hour')),
			renderTimeline(st),

			E('h3', _('Recent events')),
			events.length
				? E('ul', { 'class': 'wgrouter-events' }, events.map(function(ev) {
					return E('li', [ E('code', new Date(ev.time * 1000).toLocaleString()), ' ', ev.text ]);
				}))
				: E('p', { 'class': 'wgrouter-events' }, _('No events yet')),

			E('p', { 'class': 'right' }, _('wgrouter %s').format(orDash(st.version)))
		]);
	},

	renderDiagnosis: function(report) {
		if (report.error) {
			var text = /still running/.test(report.error)
				? _('The diagnosis is still running. Press "Run diagnosis" again in a few seconds for its report.')
				: report.error;
			return E('div', { 'class': 'alert-message warning' }, [ E('p', text) ]);
		}

		var label = { ok: _('ok'), warn: _('warning'), fail: _('failed') };
		var rows = (report.findings || []).map(function(f) {
			var where = [ f.tunnel, f.peer ].filter(function(x) { return x != null; }).join(' / ');

			return [
				f.status == 'ok' ? label.ok : E('strong', label[f.status] || f.status),
				orDash(where),
				f.summary,
				orDash(f.evidence),
				orDash(f.fix)
			];
		});

		return table([ _('Result'), _('Tunnel / peer'), _('Finding'), _('Evidence'), _('Fix') ],
			rows, _('Nothing to check: no managed tunnel'));
	},

	update: function(st) {
		dom.content(document.getElementById('wgrouter-status'), this.renderBody(st));
	},

	handleReapply: function() {
		return callReapply().then(function(reply) {
			notify(reply, _('Re-applying all paths'));
		}).catch(failed);
	},

	handleSwitch: function(wan) {
		return callSwitch(wan).then(function(reply) {
			notify(reply, wan == 'auto'
				? _('Automatic WAN choice restored')
				: _('Switching to %s').format(wan));
		}).catch(failed);
	},

	handleDiagnose: function() {
		var target = document.getElementById('wgrouter-diagnosis');

		dom.content(target, E('p', { 'class': 'spinning' }, _('Running the diagnosis…')));
		return callDiagnose().then(L.bind(function(report) {
			dom.content(target, this.renderDiagnosis(report));
		}, this)).catch(function(err) {
			dom.content(target, E('div', { 'class': 'alert-message warning' }, [
				E('p', _('No diagnosis from wgrouter: %s').format(describe(err)))
			]));
		});
	},

	render: function(st) {
		poll.add(L.bind(function() {
			return callStatus().catch(function(err) {
				return { error: describe(err) };
			}).then(L.bind(this.update, this));
		}, this), POLL_INTERVAL);

		var actions = [
			E('button', {
				'class': 'cbi-button cbi-button-neutral',
				'click': ui.createHandlerFn(this, 'handleDiagnose')
			}, _('Run diagnosis'))
		];

		if (this.writable())
			actions.push(' ',
				E('button', {
					'class': 'cbi-button cbi-button-apply',
					'click': ui.createHandlerFn(this, 'handleReapply')
				}, _('Re-apply')),
				' ',
				E('button', {
					'class': 'cbi-button cbi-button-reset',
					'click': ui.createHandlerFn(this, 'handleSwitch', 'auto')
				}, _('Automatic WAN')));
		else
			actions.push(E('p', { 'class': 'cbi-section-descr' },
				_('Read-only access: you can watch the status and run the diagnosis, but not change anything.')));

		return E([], [
			E('h2', _('WireGuard uplinks')),
			E('p', { 'class': 'cbi-section-descr' },
				_('wgrouter keeps each WireGuard peer on a working WAN uplink.')),
			E('div', { 'class': 'cbi-page-actions' }, actions),
			E('div', { 'id': 'wgrouter-status' }, this.renderBody(st)),
			E('h3', _('Diagnosis')),
			E('div', { 'id': 'wgrouter-diagnosis' },
				E('p', { 'class': 'cbi-section-descr' },
					_('The WireGuard troubleshooting checklist: handshakes, routes, DNS, firewall, MTU. It changes nothing.')))
		]);
	},

	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});

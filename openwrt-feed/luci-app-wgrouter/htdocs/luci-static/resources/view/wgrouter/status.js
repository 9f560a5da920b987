'use strict';
'require view';
'require rpc';
'require poll';
'require ui';
'require dom';

/* Status of wgrouter: one row per WireGuard peer, the WANs, recent events,
 * and the two actions of the ubus object: re-apply, switch WAN. */

var callStatus = rpc.declare({
	object: 'wgrouter',
	method: 'status',
	expect: { '': {} }
});

var callReapply = rpc.declare({
	object: 'wgrouter',
	method: 'reapply',
	expect: { '': {} }
});

var callSwitch = rpc.declare({
	object: 'wgrouter',
	method: 'switch',
	params: [ 'wan' ],
	expect: { '': {} }
});

/* seconds between refreshes of the page */
var POLL_INTERVAL = 5;

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

function table(headers, rows, empty) {
	var head = E('tr', { 'class': 'tr table-titles' }, headers.map(function(h) {
		return E('th', { 'class': 'th' }, h);
	}));

	if (!rows.length)
		return E('table', { 'class': 'table' }, [ head,
			E('tr', { 'class': 'tr placeholder' }, E('td', { 'class': 'td' }, empty)) ]);

	return E('table', { 'class': 'table' }, [ head ].concat(rows.map(function(cells) {
		return E('tr', { 'class': 'tr' }, cells.map(function(c) {
			return E('td', { 'class': 'td' }, c);
		}));
	})));
}

function notify(reply, done) {
	if (reply && reply.error)
		ui.addNotification(null, E('p', reply.error), 'danger');
	else
		ui.addNotification(null, E('p', done), 'info');
}

return view.extend({
	load: function() {
		return callStatus().catch(function(err) {
			return { error: err.message };
		});
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
					orDash(p.endpoint),
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

	wanRows: function(st) {
		var wans = st.wans || {};

		return Object.keys(wans).map(function(name) {
			var w = wans[name];

			return [
				w.active ? E('strong', name) : name,
				yesno(w.up),
				yesno(w.healthy),
				(w.families && w.families.length)
					? w.families.map(function(f) { return f.replace('ip', 'IP'); }).join(' + ')
					: '-',
				yesno(w.active),
				E('button', {
					'class': 'cbi-button cbi-button-action',
					'disabled': (w.active || !w.up) ? '' : null,
					'click': ui.createHandlerFn(this, 'handleSwitch', name)
				}, _('Use'))
			];
		}, this);
	},

	renderBody: function(st) {
		if (st.error)
			return E('div', { 'class': 'alert-message warning' },
				_('wgrouter is not answering: %s').format(st.error));

		var events = (st.events || []).slice().reverse();

		return E('div', {}, [
			E('h3', _('Peers')),
			table([ _('Tunnel'), _('Peer'), _('State'), _('WAN'), _('Endpoint'), _('Source'),
				_('Keepalive'), _('Handshake'), _('Received'), _('Sent'), _('Last step') ],
				this.peerRows(st), _('No managed peers')),

			E('h3', _('WAN uplinks')),
			table([ _('WAN'), _('Up'), _('Healthy'), _('Carries'), _('Active'), '' ],
				this.wanRows(st), _('No WAN configured')),

			E('h3', _('Recent events')),
			events.length
				? E('ul', { 'class': 'wgrouter-events' }, events.map(function(ev) {
					return E('li', [ E('code', new Date(ev.time * 1000).toLocaleString()), ' ', ev.text ]);
				}))
				: E('p', { 'class': 'wgrouter-events' }, _('No events yet')),

			E('p', { 'class': 'right' }, _('wgrouter %s').format(orDash(st.version)))
		]);
	},

	update: function(st) {
		dom.content(document.getElementById('wgrouter-status'), this.renderBody(st));
	},

	handleReapply: function() {
		return callReapply().then(function(reply) {
			notify(reply, _('Re-applying all paths'));
		});
	},

	handleSwitch: function(wan) {
		return callSwitch(wan).then(function(reply) {
			notify(reply, wan == 'auto'
				? _('Automatic WAN choice restored')
				: _('Switching to %s').format(wan));
		});
	},

	render: function(st) {
		poll.add(L.bind(function() {
			return callStatus().catch(function(err) {
				return { error: err.message };
			}).then(L.bind(this.update, this));
		}, this), POLL_INTERVAL);

		return E([], [
			E('h2', _('WireGuard uplinks')),
			E('p', { 'class': 'cbi-section-descr' },
				_('wgrouter keeps each WireGuard peer on a working WAN uplink.')),
			E('div', { 'class': 'cbi-page-actions' }, [
				E('button', {
					'class': 'cbi-button cbi-button-apply',
					'click': ui.createHandlerFn(this, 'handleReapply')
				}, _('Re-apply')),
				' ',
				E('button', {
					'class': 'cbi-button cbi-button-reset',
					'click': ui.createHandlerFn(this, 'handleSwitch', 'auto')
				}, _('Automatic WAN'))
			]),
			E('div', { 'id': 'wgrouter-status' }, this.renderBody(st))
		]);
	},

	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});

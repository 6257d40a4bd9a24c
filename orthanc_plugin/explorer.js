// MIAD-MARK: a "Protect and send" button on a study's page in Orthanc Explorer. It offers only the
// destinations a protect rule names (GET /miadmark/destinations); the job it starts is listed on the
// Explorer's Jobs page (the plugin adds its jobs to GET /jobs) and survives a restart.
// Same pattern as the Orthanc Book's "Open in OHIF" example: added once, enhanced by jQuery Mobile.
$('#study').live('pagebeforecreate', function() {
  if ($('#miadmark-protect').length) return;
  var button = $('<a>')
    .attr('id', 'miadmark-protect').attr('data-role', 'button').attr('href', '#')
    .attr('data-icon', 'forward').attr('data-theme', 'e')
    .text('Protect and send');
  var anchor = $('#study-delete');
  if (anchor.length) button.insertBefore(anchor.parent().parent());
  else $('#study-info').parent().append(button);
  button.click(function(e) {
    e.preventDefault();
    var study = $.mobile.pageData.uuid;
    $.ajax({ url: '../miadmark/destinations', dataType: 'json', async: false,
      success: function(destinations) {
        if (!destinations.length) { alert('MIAD-MARK: no protect destination in the configuration'); return; }
        var names = destinations.map(function(d) { return d.Name + ' (' + d.Kind.replace('orthanc_', '') + ' ' + d.Target + ')'; });
        var choice = prompt('Protect and send this study to which destination?\n' + names.join('\n'),
                            destinations[0].Name);
        if (!choice) return;
        $.ajax({ url: '../miadmark/protect', type: 'POST', dataType: 'json', async: false,
          data: JSON.stringify({ Study: study, Destination: choice.split(' ')[0] }),
          success: function(job) {
            alert('MIAD-MARK: ' + job.Protect + ' instance(s) to protect and send to ' + job.Destination +
                  (job.LesionSourcesUnchanged ? ', ' + job.LesionSourcesUnchanged + ' SEG / RTSTRUCT unchanged' : ''));
            window.location.assign('explorer.html#job?uuid=' + job.ID);
          },
          error: function(xhr) { alert('MIAD-MARK refused: ' + xhr.responseText); }
        });
      },
      error: function() { alert('MIAD-MARK plugin is not answering'); }
    });
  });
});
